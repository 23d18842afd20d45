"""Issue 15: the permission table, the key roles, and the command lines around them.

* ``authz``: the one permission check, as a table, without a broker;
* ``rtbatch keys generate --role --authorize`` and the authorized-keys layout;
* ``rtbatch broker`` refuses CURVE without authorized keys off loopback, and says
  in its start line when there is no authentication at all;
* ``rtbatch dlq`` with an admin key purges a CURVE broker's dead letters, and with a
  client key gets a clear refusal.
"""

from __future__ import annotations

import select
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import zmq
from click.testing import CliRunner

from realtime_batch.cli import main
from realtime_batch.transport import (
    Message,
    PermissionDeniedError,
    QueueOptions,
    QueueSettingsConflict,
    dead_letter_queue,
)
from realtime_batch.transport.servicebus_admin import check_provisioned as _check_provisioned
from realtime_batch.transport.zeromq import authz, wire
from realtime_batch.transport.zeromq.broker import Broker
from realtime_batch.transport.zeromq.client import ZmqTransport
from realtime_batch.transport.zeromq.curve import BrokerCurve, load_public_key, load_roles

KINDS = authz.QueueKinds()
CLIENT = authz.Caller(authz.CLIENT, "A" * 40)
ENGINE = authz.Caller(authz.ENGINE, "B" * 40)
ADMIN = authz.Caller(authz.ADMIN, "C" * 40)
OWN = CLIENT.prefix + "session-1"


class FakeStore:
    """Leases and queue settings, as the checks read them from ``QueueStore``."""

    def __init__(self, leases=None, queues=None):
        self.leases = leases or {}
        self.queues = queues or {}

    def lease_place(self, token):
        return self.leases.get(token)

    def queue_options(self, name):
        return self.queues.get(name)


def allowed(caller, command, *args, store=None) -> bool:
    request = wire.Request(command, 1, list(args))
    try:
        authz.authorize(caller, request, store or FakeStore(), KINDS)
    except PermissionDeniedError:
        return False
    return True


@pytest.mark.parametrize(
    ("caller", "command", "args", "expected"),
    [
        # client: send tasks and cancels, read only its own mailbox groups
        (CLIENT, wire.SEND, ("tasks", 1), True),
        (CLIENT, wire.SEND, ("control", 1), True),
        (CLIENT, wire.SEND, ("results", 1), False),
        (CLIENT, wire.SEND, ("tasks/$deadletterqueue", 1), False),
        (CLIENT, wire.RECEIVE, ("tasks", 1, 0, None), False),
        (CLIENT, wire.RECEIVE, ("control", 1, 0, "engine-1"), False),
        (CLIENT, wire.RECEIVE, ("results", 1, 0, OWN), True),
        (CLIENT, wire.RECEIVE, ("results", 1, 0, "someone-else"), False),
        (CLIENT, wire.RECEIVE, ("results", 1, 0, None), False),
        (CLIENT, wire.RECEIVE, ("tasks/$deadletterqueue", 1, 0, None), False),
        (CLIENT, wire.SETTLE_RECEIVE, ("results", 0, [], "results", 1, 0, OWN), True),
        (CLIENT, wire.SETTLE_RECEIVE, ("results", 0, [], "results", 1, 0, "x"), False),
        (CLIENT, wire.SETTLE_RECEIVE, ("results", 1, [], "results", 1, 0, OWN), False),
        (CLIENT, wire.DECLARE, ("tasks", None, None), True),
        (CLIENT, wire.DECLARE, ("tasks", 30.0, 10), True),
        (CLIENT, wire.DECLARE, ("tasks", 0.05, 1), False),
        (CLIENT, wire.HEARTBEAT, (1.0,), True),
        # engine: take tasks and cancels, send results; no mailboxes, no dead letters
        (ENGINE, wire.RECEIVE, ("tasks", 1, 0, None), True),
        (ENGINE, wire.RECEIVE, ("control", 1, 0, "engine-1"), True),
        (ENGINE, wire.RECEIVE, ("results", 1, 0, OWN), False),
        (ENGINE, wire.SEND, ("results", 1), True),
        (ENGINE, wire.SEND, ("control", 1), False),
        (ENGINE, wire.SEND_COMPLETE, ("results", 1, []), True),
        (ENGINE, wire.SETTLE_RECEIVE, ("results", 1, [], "tasks", 1, 0, None), True),
        (ENGINE, wire.RECEIVE, ("tasks/$deadletterqueue", 1, 0, None), False),
        (ENGINE, wire.DECLARE, ("tasks", 5.0, 3), False),
        # admin: everything
        (ADMIN, wire.RECEIVE, ("tasks/$deadletterqueue", 1, 0, None), True),
        (ADMIN, wire.SEND, ("tasks/$deadletterqueue", 1), True),
        (ADMIN, wire.RECEIVE, ("results", 1, 0, None), True),
        (ADMIN, wire.DECLARE, ("tasks", 0.05, 1), True),
    ],
)
def test_permission_table(caller, command, args, expected):
    assert allowed(caller, command, *args) is expected


def test_settling_follows_where_the_lease_is():
    store = FakeStore(
        leases={
            "task": ("tasks", None),
            "mine": ("results", OWN),
            "theirs": ("results", "k0000-other"),
            "dead": ("tasks/$deadletterqueue", None),
        }
    )
    for command in (wire.COMPLETE, wire.ABANDON, wire.GIVE_BACK, wire.RENEW):
        assert allowed(CLIENT, command, "mine", store=store)
        assert not allowed(CLIENT, command, "theirs", store=store)
        assert not allowed(CLIENT, command, "task", store=store)
        assert allowed(ENGINE, command, "task", store=store)
        assert not allowed(ENGINE, command, "dead", store=store)
    assert not allowed(CLIENT, wire.COMPLETE_MANY, "mine", "theirs", store=store)
    assert allowed(CLIENT, wire.COMPLETE_MANY, "mine", "gone", store=store)  # LockLost later
    assert not allowed(CLIENT, wire.DEAD_LETTER, "theirs", "r", "d", store=store)


def test_an_engine_may_name_the_settings_an_admin_provisioned():
    store = FakeStore(queues={"tasks": QueueOptions(5.0, 3)})
    assert allowed(ENGINE, wire.DECLARE, "tasks", 5.0, 3, store=store)
    assert not allowed(ENGINE, wire.DECLARE, "tasks", 6.0, 3, store=store)


def test_every_command_has_a_check():
    assert set(authz._CHECKS) == set(wire.COMMAND_NAMES)


def test_queue_kinds_are_configurable():
    kinds = authz.QueueKinds(frozenset({"mail"}), frozenset({"ctl"}))
    assert [kinds.kind(q) for q in ("mail", "ctl", "results", "mail/$deadletterqueue")] == [
        authz.MAILBOX, authz.CONTROL, authz.TASK, authz.DEAD_LETTERS,
    ]  # fmt: skip


def test_mailbox_prefix_is_bound_to_the_key():
    assert authz.mailbox_prefix("A" * 40) == CLIENT.prefix
    assert authz.mailbox_prefix("A" * 39 + "B") != CLIENT.prefix


# -- keys and their roles -----------------------------------------------------------------------


def keys_generate(tmp_path, *args: str) -> str:
    result = CliRunner().invoke(main, ["keys", "generate", "--dir", str(tmp_path / "k"), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_keys_generate_authorizes_with_a_role(tmp_path):
    authorized = tmp_path / "authorized"
    out = keys_generate(
        tmp_path, "--name", "e1", "--role", "engine", "--authorize", str(authorized)
    )
    assert "authorized as engine" in out
    keys_generate(tmp_path, "--name", "a1", "--role", "admin", "--authorize", str(authorized))
    keys_generate(tmp_path, "--name", "c1", "--authorize", str(authorized))  # default: client
    keys_generate(tmp_path, "--name", "old")  # today's --dir/--name still works
    (authorized / "old.key").write_bytes((tmp_path / "k" / "old.key").read_bytes())  # flat
    roles = load_roles(authorized)

    def role(name):
        return roles[load_public_key(tmp_path / "k" / f"{name}.key").decode()]

    assert [role(n) for n in ("e1", "a1", "c1", "old")] == ["engine", "admin", "client", "client"]


def test_keys_generate_refuses_an_unknown_role(tmp_path):
    result = CliRunner().invoke(
        main, ["keys", "generate", "--dir", str(tmp_path), "--role", "root", "--authorize", "x"]
    )
    assert result.exit_code == 2 and "root" in result.output


def test_a_key_in_two_roles_is_refused(tmp_path):
    authorized = tmp_path / "authorized"
    keys_generate(tmp_path, "--name", "k1", "--role", "engine", "--authorize", str(authorized))
    (authorized / "admin").mkdir()
    (authorized / "admin" / "k1.key").write_bytes((authorized / "engine" / "k1.key").read_bytes())
    with pytest.raises(ValueError, match="both"):
        load_roles(authorized)


# -- the broker's command line ------------------------------------------------------------------


def test_curve_without_authorized_keys_off_loopback_is_refused(tmp_path):
    keys_generate(tmp_path, "--name", "broker")
    result = CliRunner().invoke(
        main,
        ["broker", "--bind", "tcp://0.0.0.0:0", "--curve-secret-key",
         str(tmp_path / "k" / "broker.key_secret")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--authorized-keys" in result.output


def test_the_start_line_says_there_is_no_authentication(no_leaked_processes):
    cmd = [sys.executable, "-m", "realtime_batch.transport.zeromq", "--bind",
           "tcp://127.0.0.1:0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        end = time.monotonic() + 30
        while "listening" not in line and time.monotonic() < end and proc.poll() is None:
            if select.select([proc.stderr], [], [], 0.2)[0]:
                line = proc.stderr.readline()
        assert "no CURVE: no authentication" in line
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


# -- rtbatch dlq with keys ----------------------------------------------------------------------


@pytest.fixture
def curve_broker(tmp_path):
    authorized = tmp_path / "authorized"
    keys_generate(tmp_path, "--name", "broker")
    for role in ("engine", "admin", "client"):
        keys_generate(tmp_path, "--name", role, "--role", role, "--authorize", str(authorized))
    context = zmq.Context()
    broker = Broker(
        "tcp://127.0.0.1:0",
        curve=BrokerCurve(tmp_path / "k" / "broker.key_secret", authorized),
        context=context,
    )
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(
            url="zmq://127.0.0.1:" + broker.endpoint.rsplit(":", 1)[1], keys=tmp_path / "k"
        )
    finally:
        broker.stop()
        thread.join(10)
        broker.close()
        context.term()


def test_dlq_purge_needs_an_admin_key(curve_broker):
    keys = curve_broker.keys
    engine = ZmqTransport(
        curve_broker.url,
        curve_server_key=keys / "broker.key",
        curve_secret_key=keys / "engine.key_secret",
    )
    try:
        engine.declare_queue("tasks")
        engine.send("tasks", Message(b"poison"))
        [delivery] = engine.receive("tasks", timeout=5)
        engine.dead_letter(delivery, "test", "poison")
    finally:
        engine.close()
    base = ["dlq", "--transport", curve_broker.url, "--curve-server-key", str(keys / "broker.key")]
    runner = CliRunner()
    refused = runner.invoke(
        main, [*base, "--curve-secret-key-file", str(keys / "client.key_secret"), "purge", "--yes"]
    )
    assert refused.exit_code == 1 and "admin" in refused.output
    purged = runner.invoke(
        main, [*base, "--curve-secret-key-file", str(keys / "admin.key_secret"), "purge", "--yes"]
    )
    assert purged.exit_code == 0, purged.output
    assert "purged 1 message(s)" in purged.output
    with pytest.raises(ValueError):  # one key without the other
        from realtime_batch.transport.zeromq.curve import curve_transport_options

        curve_transport_options(None, str(keys / "admin.key_secret"))
    assert dead_letter_queue("tasks") == "tasks/$deadletterqueue"


# -- Service Bus provisioning -------------------------------------------------------------------


def test_service_bus_provisioned_queue_with_other_settings_is_a_conflict():
    import datetime

    existing = SimpleNamespace(lock_duration=datetime.timedelta(seconds=60), max_delivery_count=10)
    _check_provisioned("tasks", existing, None)  # no settings named: anything goes
    _check_provisioned("tasks", existing, QueueOptions(60.0, 10))
    with pytest.raises(QueueSettingsConflict):
        _check_provisioned("tasks", existing, QueueOptions(30.0, 10))


def test_an_engine_needs_both_curve_keys(tmp_path):
    keys_generate(tmp_path, "--name", "broker")
    result = CliRunner().invoke(
        main,
        ["engine", "--transport", "zmq://127.0.0.1:1", "--queue", "tasks",
         "--tasks-dir", str(tmp_path), "--curve-server-key", str(tmp_path / "k" / "broker.key")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "go together" in result.output
