"""rtbatch pool|job|logs against the Batch fake and Azurite, configured by environment."""

from __future__ import annotations

import pytest
from azure.storage.blob import BlobServiceClient
from batch_fake import DEFAULT_ACCOUNT, DEFAULT_KEY
from click.testing import CliRunner

from realtime_batch.cli import main
from realtime_batch.config import Config


@pytest.fixture
def env(batch_fake, azurite, tmp_path):
    _, url = batch_fake
    wheel = tmp_path / "realtime_batch-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"stand-in wheel")
    task = tmp_path / "hello.py"
    task.write_text("def run(x):\n    return x\n")
    values = {
        "RTBATCH_CONFIG": str(tmp_path / "rtbatch.toml"),
        "RTBATCH_POOL_BACKEND": "azure-batch",
        "RTBATCH_POOL_ID": "clipool",
        "RTBATCH_POOL_TASK_FILES": str(task),
        "RTBATCH_BATCH_ACCOUNT_URL": url,
        "RTBATCH_BATCH_ACCOUNT_NAME": DEFAULT_ACCOUNT,
        "RTBATCH_BATCH_ACCOUNT_KEY": DEFAULT_KEY,
        "RTBATCH_BATCH_WHEEL": str(wheel),
        "RTBATCH_BATCH_WHEELHOUSE": str(tmp_path),
        "RTBATCH_BATCH_POLL_INTERVAL": "0.01",
        "RTBATCH_BATCH_DRAIN_TIMEOUT": "0.2",
        "RTBATCH_STORAGE_CONNECTION_STRING": azurite,
        "RTBATCH_TRANSPORT_ENGINE_URL": "zmq://10.0.0.10:5555",
    }
    yield values
    service = BlobServiceClient.from_connection_string(azurite)
    for name in ("rtbatch-clipool", "rtbatch-clipool-logs"):
        if service.get_container_client(name).exists():
            service.delete_container(name)


def run(env, *args):
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_pool_lifecycle_through_the_cli(env, batch_fake, tmp_path):
    fake, _ = batch_fake
    out = run(env, "pool", "create", "--nodes", "2", "--engines-per-node", "3")
    assert "engines running under job rtbatch-clipool-" in out
    [body] = fake.bodies("POST", "/pools")
    assert (body["targetDedicatedNodes"], body["taskSlotsPerNode"]) == (2, 3)
    assert "clipool" in run(env, "pool", "list")
    [job_id] = run(env, "job", "list").split()
    assert len(fake.tasks[job_id]) == 6
    fake.set_task_state(job_id, "engine-0002-r0", "completed", exit_code=137)
    assert "engine-0002-r1" in run(env, "job", "restart")
    assert "9 engine slots" in run(env, "pool", "resize", "--nodes", "2", "--spot", "1")
    assert "engine slots" in run(env, "pool", "resize", "--autoscale", "$TargetDedicatedNodes=1;")
    run(env, "pool", "use", "clipool")
    assert Config.load(env["RTBATCH_CONFIG"], env={})["pool.id"] == "clipool"
    out = run(env, "pool", "repurpose")
    assert "restarted under job" in out and job_id not in fake.jobs
    logs = BlobServiceClient.from_connection_string(env["RTBATCH_STORAGE_CONNECTION_STRING"])
    logs.get_container_client("rtbatch-clipool-logs").upload_blob(
        "j/engine-0000-r0/stdout.txt", b"hi"
    )
    out = run(env, "logs", "--dest", str(tmp_path / "logs"))
    assert (tmp_path / "logs/j/engine-0000-r0/stdout.txt").read_bytes() == b"hi"
    assert "deleted 1 job(s)" in run(env, "job", "delete", "--all")
    run(env, "pool", "delete", "--yes")
    assert "clipool" not in fake.pools


def test_usage_errors(env):
    result = CliRunner().invoke(main, ["job", "delete"], env=env)
    assert result.exit_code == 2 and "--all" in result.output
    result = CliRunner().invoke(main, ["pool", "resize"], env=env)
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["pool", "use", "nope"], env=env)
    assert result.exit_code == 1 and "nope" in result.output


@pytest.mark.timeout(120)
def test_resize_to_zero_engines_finishes(env, batch_fake):
    fake, _ = batch_fake
    run(env, "pool", "create", "--nodes", "2", "--engines-per-node", "2")
    [job_id] = run(env, "job", "list").split()
    assert "0 engine slots" in run(env, "pool", "resize", "--engines", "0")
    assert fake.nodes["clipool"] == []
    assert [t for t in fake.tasks[job_id].values() if t["state"] != "completed"] == []
    run(env, "pool", "delete", "--yes")
