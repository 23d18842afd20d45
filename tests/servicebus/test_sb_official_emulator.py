"""The transport against the official Service Bus emulator (docker; skipped without an engine).

pytest-docker starts ``docker-compose.yml`` (emulator + SQL Server) once per session;
the entities are the ones in ``Config.json`` (the emulator has no management API).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import realtime_batch as rb
from realtime_batch.transport import Message, dead_letter_queue, open_transport
from realtime_batch.transport.servicebus_admin import emulator_config

HERE = Path(__file__).resolve().parent
TASKS = HERE.parent / "emulator" / "tasks"
TEST_QUEUE = "rtb-emulator-test"

pytestmark = [pytest.mark.docker, pytest.mark.azure]


def docker_engine_problem() -> str | None:
    """Why the docker tests cannot run here, or None when an engine answers."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        probe = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if probe.returncode != 0:
        detail = (probe.stderr or probe.stdout).strip().splitlines()
        return "no docker engine reachable: " + (detail[-1] if detail else "docker info failed")
    return None


@pytest.fixture(scope="session")
def docker_compose_file():
    return str(HERE / "docker-compose.yml")


@pytest.fixture(scope="session")
def emulator_conn_str(request):
    problem = docker_engine_problem()
    if problem:
        pytest.skip(f"official Service Bus emulator tests need docker: {problem}")
    services = request.getfixturevalue("docker_services")
    ip = request.getfixturevalue("docker_ip")
    amqp = services.port_for("emulator", 5672)
    health = f"http://{ip}:{services.port_for('emulator', 5300)}/health"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    services.wait_until_responsive(check=healthy, timeout=300.0, pause=2.0)
    return (
        f"Endpoint=sb://{ip}:{amqp};SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
    )


def test_committed_config_matches_the_provision_command():
    committed = json.loads((HERE / "Config.json").read_text())
    expected = emulator_config(
        lock_duration=5,
        max_delivery_count=3,
        results_lock_duration=30,
        extra_queues=(TEST_QUEUE,),
    )
    assert committed == expected


def test_round_trip_abandon_and_dead_letter(emulator_conn_str):
    with open_transport(emulator_conn_str) as t:
        t.declare_queue(TEST_QUEUE)  # no control entity there: trusts Config.json
        tag = uuid.uuid4().hex
        t.send(TEST_QUEUE, Message(b"hello", properties={"tag": tag}))
        counts = []
        for _ in range(3):  # MaxDeliveryCount is 3 in Config.json
            [d] = t.receive(TEST_QUEUE, timeout=30)
            assert d.message.properties["tag"] == tag
            counts.append(d.delivery_count)
            t.abandon(d)
        assert counts == [1, 2, 3]
        [dead] = t.receive(dead_letter_queue(TEST_QUEUE), timeout=30)
        assert dead.message.properties["DeadLetterReason"] == "MaxDeliveryCountExceeded"
        t.complete(dead)


def test_session_mailboxes(emulator_conn_str):
    group = f"client-{uuid.uuid4().hex[:8]}"
    with open_transport(emulator_conn_str) as t:
        t.send("results", [Message(b"%d" % i, group=group) for i in range(5)])
        got = []
        end = time.monotonic() + 60
        while len(got) < 5 and time.monotonic() < end:
            for d in t.receive("results", max_messages=5, timeout=5, group=group):
                t.complete(d)
                got.append(d.message.body)
        assert got == [b"%d" % i for i in range(5)]


def test_local_pool_engines_over_the_emulator(emulator_conn_str):
    files = [TASKS / "echo.py"]
    with (
        rb.LocalPool(engines=1, transport=emulator_conn_str, task_files=files) as pool,
        rb.Session(pool) as session,
    ):
        futures = session.map("echo.py", range(10))
        assert [f.result(timeout=120)["args"][0] for f in futures] == list(range(10))
