"""Issue 15, end to end: a CURVE pool with roles, engines with keys, and spoofed cancels.

* ``LocalPool(curve=True)`` makes broker, engine, client and admin keys, starts the
  broker with roles enforced, engines (direct mode) connect with the engine key and
  sessions with the client key; before, an engine could not connect to a broker
  started with ``--authorized-keys`` at all.
* A second session's cancel request for the first session's running task (the
  session id and task id are all it needs to name it) no longer stops the task, on
  memory:// and zmq://: tasks carry the hash of their session's secret.
* A result forged for another session's task, straight into its mailbox or through
  an engine, is dropped: results carry that hash back.
"""

from __future__ import annotations

import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
import relay_engine_main

import realtime_batch as rb
from realtime_batch.control import CONTROL_QUEUE, cancel_messages
from realtime_batch.engine._supervise import CANCEL_GRACE
from realtime_batch.protocol import ReplyTo, ResultRecord, TaskRecord, encode_result, encode_task
from realtime_batch.transport import Message, PermissionDeniedError, open_transport
from realtime_batch.transport.zeromq.authz import mailbox_prefix
from realtime_batch.transport.zeromq.curve import load_secret_key

HOLD = '''
    """Write this process's pid to ``marker``, then sleep ``seconds`` and return "slept"."""
    import os
    import time
    from pathlib import Path


    def run(marker, seconds):
        Path(marker + ".tmp").write_text(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
        time.sleep(seconds)
        return "slept"
'''
WAIT = '''
    """Write ``marker``, then wait (up to a minute) for ``release`` to exist."""
    import time
    from pathlib import Path


    def run(marker, release):
        Path(marker).write_text("started")
        end = time.monotonic() + 60
        while not Path(release).exists() and time.monotonic() < end:
            time.sleep(0.02)
        return "released"
'''


@pytest.fixture
def hold_task(tmp_path) -> Path:
    path = tmp_path / "hold.py"
    path.write_text(textwrap.dedent(HOLD).lstrip())
    return path


@pytest.fixture
def wait_task(tmp_path) -> Path:
    path = tmp_path / "wait.py"
    path.write_text(textwrap.dedent(WAIT).lstrip())
    return path


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("mode", ["direct", "relay"])
def test_a_curve_pool_runs_tasks_with_roles_enforced(
    no_leaked_processes, tmp_path, hold_task, mode
):
    with relay_engine_main.pool(
        mode, engines=1, task_files=[hold_task], curve=True, root=tmp_path / "p"
    ) as pool:
        keys = pool.curve_keys
        assert keys is not None and (keys / "authorized" / "engine" / "engine.key").exists()
        with rb.Session(pool) as session:
            client_public, _ = load_secret_key(keys / "client.key_secret")
            assert session.id.startswith(mailbox_prefix(client_public))  # bound to its key
            future = session.submit("hold.py", str(tmp_path / "m"), 0)
            assert future.result(timeout=60) == "slept"
            # The session's own cancel still reaches the engine (client -> control queue).
            running = session.submit("hold.py", str(tmp_path / "long"), 120)
            wait_for((tmp_path / "long").exists, what="the long task to start")
            pid = int((tmp_path / "long").read_text())
            assert session.cancel([running.task_id]) == 1
            wait_for(lambda: pid_gone(pid), what="the cancelled task's process to stop")
        client = open_transport(pool.transport_url, **pool.transport_options)
        with client, pytest.raises(PermissionDeniedError):  # the client key reads no tasks
            client.receive(pool.queue, timeout=0)
        broker_log = (tmp_path / "p" / "broker.log").read_text()
        assert "roles enforced: 1 client, 1 engine, 1 admin key(s)" in broker_log


@pytest.mark.parametrize("scheme", ["memory", "zmq"])
def test_a_spoofed_cancel_does_not_stop_another_sessions_task(
    no_leaked_processes, tmp_path, wait_task, scheme
):
    url = f"memory://spoof-{uuid.uuid4().hex}" if scheme == "memory" else "zmq://127.0.0.1:0"
    release = tmp_path / "release"
    # relay: the engine answers a cancelled task that waits in its queue at once
    pool = relay_engine_main.pool("relay", engines=1, transport=url, task_files=[wait_task])
    with pool, rb.Session(pool) as victim, rb.Session(pool) as attacker:
        running = victim.submit("wait.py", str(tmp_path / "a"), str(release))
        waiting = victim.submit("wait.py", str(tmp_path / "b"), str(release))
        wait_for((tmp_path / "a").exists, what="the victim's task to start")
        wait_for(lambda: running.task_id in victim._tracker.running_on, what="the running notice")
        engine = victim._tracker.running_on[running.task_id]
        # Everything a cancel request names is known to others: session and task ids.
        forged = cancel_messages(victim.id, engine, [running.task_id])
        forged += cancel_messages(victim.id, engine, [running.task_id], secret="guess")
        attacker._transport.send(CONTROL_QUEUE, forged)
        # The victim's own cancel goes to the same engine after them; once the engine has
        # answered it (a duplicate for the session), it has acted on the forged ones too.
        assert victim.cancel([waiting.task_id]) == 1
        wait_for(lambda: victim.duplicates_dropped == 1, what="the engine's cancelled answer")
        # A cancel the engine accepted kills the running task after a grace period: give it
        # that time many times over. (This wait only lets an accepted cancel show; nothing
        # here can fail for being slow.)
        time.sleep(20 * CANCEL_GRACE)
        assert not running.done()
        release.touch()
        assert running.result(timeout=60) == "released"


def test_a_forged_result_does_not_resolve_another_sessions_future(
    no_leaked_processes, tmp_path, wait_task
):
    """Straight into the mailbox (allowed without CURVE, on memory://) or through an engine
    (a task whose reply_to names the victim's mailbox): the victim keeps only results that
    carry its session key, which only the engines read in its tasks."""
    url = f"memory://forge-{uuid.uuid4().hex}"
    # prefetch 1: the busy engine takes nothing more, the other runs the forged task
    pool = rb.LocalPool(engines=2, transport=url, task_files=[wait_task], prefetch=1)
    with pool, rb.Session(pool) as victim, open_transport(url) as attacker:
        release = tmp_path / "release"
        future = victim.submit("wait.py", str(tmp_path / "victim"), str(release))
        wait_for((tmp_path / "victim").exists, what="the victim's task to start")
        forged = ResultRecord(session=victim.id, job=victim.job, task=future.task_id,
                              status="ok", value="forged", engine="e")  # fmt: skip
        mailbox = Message(encode_result(forged), group=victim.id)
        attacker.send(victim.results_queue, mailbox)
        task = TaskRecord(session=victim.id, job=victim.job, task=future.task_id,
                          command="wait.py", args=[str(tmp_path / "forger"), str(tmp_path)],
                          reply_to=ReplyTo(victim.results_queue, victim.id))  # fmt: skip
        attacker.send(victim.task_queue, Message(encode_task(task)))
        wait_for(lambda: victim.forged_dropped == 2, what="both forged results to arrive")
        assert not future.done()
        release.touch()
        assert future.result(timeout=60) == "released"
