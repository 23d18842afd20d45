"""Direct mode specifics: the shared ledger, who may use the mode, and that tasks held
next to a crash are not charged an attempt (checked in both modes)."""

from __future__ import annotations

import os
import uuid

import pytest
from engine_helpers import Harness

from realtime_batch.emulator import LocalPool
from realtime_batch.engine import Engine
from realtime_batch.engine._ledger import Ledger
from realtime_batch.engine._outbox import Held, Outbox
from realtime_batch.protocol import ReplyTo, TaskRecord, decode_result, encode_task
from realtime_batch.transport import (
    ConnectionLostError,
    Delivery,
    LockLostError,
    Message,
    open_transport,
)
from realtime_batch.transport.base import Capabilities
from realtime_batch.transport.memory import MemoryTransport
from realtime_batch.transport.zeromq.client import ZmqTransport


def delivery(token: str, *, notify: bool = False, count: int = 1) -> Delivery:
    properties = {"notify": True} if notify else {}
    return Delivery(Message(b"body-" + token.encode(), properties=properties), "q", count,
                    1000.0, token)  # fmt: skip


def test_the_ledger_shows_the_engine_what_the_worker_holds_and_runs():
    engine_side = Ledger(3, 4096)
    worker_side = Ledger(3, 4096, fd=os.dup(engine_side.fd))
    try:
        assert worker_side.room() == 3
        slots = worker_side.hold([delivery("t1"), delivery("t2", notify=True, count=2)])
        view = engine_side.snapshot()
        assert view.running == -1
        assert {s: v[:3] for s, v in view.held.items()} == {
            slots[0]: ("t1", 1, 0),
            slots[1]: ("t2", 2, 1),
        }
        worker_side.start(slots[1], b"the task", 123.5, 4)
        view = engine_side.snapshot(body=True)
        assert (view.running, view.run_seq, view.deadline, view.attempt, view.body) == (
            slots[1], 1, 123.5, 4, b"the task"
        )  # fmt: skip
        worker_side.stop()
        worker_side.release([slots[1]])
        view = engine_side.snapshot()
        assert view.running == -1 and view.finished == 1 and list(view.held) == [slots[0]]
        assert worker_side.room() == 2
        with pytest.raises(ValueError, match="too long"):
            worker_side.hold([delivery("x" * 500)])
        engine_side.reset()  # for the next worker
        assert engine_side.snapshot().held == {}
    finally:
        worker_side.close()
        engine_side.close()


def test_the_feeder_follows_the_transport_capabilities(harness: Harness, tmp_path):
    # chosen from what the backend declares, not from the URL nor from an option
    assert not MemoryTransport.capabilities.settles_by_token
    with ZmqTransport("zmq://127.0.0.1:9") as zmq_transport:  # nothing listens: no matter
        assert zmq_transport.capabilities.settles_by_token
    memory = Engine(f"memory://direct-{os.getpid()}", "tasks", harness.tasks_dir)
    try:
        assert memory.direct is False
    finally:
        memory.transport.close()
    # direct needs a URL the worker can open: an open transport object is always relayed
    assert Engine(harness.transport, "tasks", harness.tasks_dir).direct is False
    with pytest.raises(TypeError, match="direct"):
        Engine(harness.transport, "tasks", harness.tasks_dir, direct=True)  # type: ignore[call-arg]


@pytest.mark.parametrize("value", ["direct", "relay", "auto", "fast"])
def test_local_pool_refuses_the_removed_worker_mode(value):
    with pytest.raises(TypeError, match=r"worker_mode=.*removed.*measured no faster"):
        LocalPool(engines=0, worker_mode=value)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'worker_modes'"):
        LocalPool(engines=0, worker_modes=value)  # type: ignore[call-arg]


@pytest.mark.parametrize("argv", [["--worker-mode", "relay"], ["--worker-mode=direct"]])
def test_engine_cli_refuses_the_removed_worker_mode(argv):
    from click.testing import CliRunner

    from realtime_batch.engine.cli import engine

    result = CliRunner().invoke(engine, ["--transport", "memory://x", *argv])
    assert result.exit_code == 2, result.output
    assert "--worker-mode: the worker mode option was removed" in result.output
    assert "measured no faster" in result.output


def test_tasks_held_next_to_a_crash_are_not_charged_an_attempt(harness: Harness):
    """The worker dies running one task while holding three more: those run once, as
    attempt 1, and the crashed one is answered as such (no retries asked for)."""
    harness.transport.declare_queue(harness.queue)
    crash = harness.submit("crash.py", max_retries=0)
    others = [harness.submit("noop.py", i, max_retries=0) for i in range(3)]
    harness.engine(prefetch=4)
    results = harness.results(4)
    assert results[crash].error.type == "WorkerCrashedError"
    for task in others:
        assert results[task].status == "ok" and results[task].attempt == 1, results[task]


def test_a_body_too_large_for_the_ledger_is_left_out():
    engine_side = Ledger(1, 16)
    worker_side = Ledger(1, 16, fd=os.dup(engine_side.fd))
    try:
        [slot] = worker_side.hold([delivery("t1")])
        worker_side.start(slot, b"x" * 17, 0.0, 1)
        view = engine_side.snapshot(body=True)
        assert view.running == slot and view.body == b""
        worker_side.stop()
        worker_side.start(slot, b"y" * 16, 0.0, 1)
        assert engine_side.snapshot(body=True).body == b"y" * 16
    finally:
        worker_side.close()
        engine_side.close()


class _MergingTransport:
    """A memory transport that also offers ``settle_and_receive``, which fails."""

    capabilities = Capabilities(settle_and_receive=True, give_back=True)

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def settle_and_receive(self, *args, **kwargs):
        raise ConnectionLostError("simulated: the broker went away mid-request")


@pytest.mark.parametrize("merging", [False, True], ids=["two-requests", "merged-fails"])
def test_results_sent_with_the_next_receive_are_never_lost(merging, tmp_path):
    """``Outbox.settle_and_receive``: without a one-request operation the results are
    settled, then the receive runs; when the one request fails they are settled the
    ordinary way and the error reaches the caller (the worker's loop retries)."""
    url = f"memory://merge-{uuid.uuid4().hex}"
    with open_transport(url) as t:
        for name in ("tasks", "results"):
            t.declare_queue(name)
        record = TaskRecord(session="s", job="j", task="t1", command="noop.py",
                            reply_to=ReplyTo("results", "s"))  # fmt: skip
        t.send("tasks", [Message(encode_task(record)), Message(b"next")])
        [d] = t.receive("tasks", timeout=5)
        transport = _MergingTransport(t) if merging else t
        outbox = Outbox(transport, "engine-1", 10, None)
        outbox.finished(Held.received(d, record), "ok", 42, None, 1.0, 2.0)
        entries, _ = outbox.take()
        if merging:
            with pytest.raises(ConnectionLostError):
                outbox.settle_and_receive(entries, "tasks", max_messages=5, timeout=1)
        else:
            got = outbox.settle_and_receive(entries, "tasks", max_messages=5, timeout=1)
            assert [x.message.body for x in got] == [b"next"]
        [reply] = t.receive("results", group="s", timeout=5)
        assert decode_result(reply.message.body).value == 42
        with pytest.raises(LockLostError):
            t.complete(d)  # completed with the result


class _DeadWorker:
    """Stands in for a worker process that was just killed."""

    proc = None

    def kill(self) -> int:
        return -9

    def crash_report(self) -> str:
        return ""

    def stop(self, timeout: float) -> None:
        pass


class _KeptOutbox(Outbox):
    """An outbox that keeps what it would settle, to look at."""

    def __init__(self, transport) -> None:
        super().__init__(transport, "engine-1", 10, None)
        self.kept: list = []

    def flush(self) -> int:
        entries, _ = self.take()
        self.kept += entries
        return len(entries)


def test_a_retry_that_started_just_before_a_timeout_kill_is_given_back_counted(tmp_path):
    """The engine kills the worker for a task's timeout just as that task ends and a
    ``retry_on`` retry (attempt 2) starts. The retry is not to blame, so it goes back to
    the queue; like a retry backing off, counted (it comes back as attempt 2, the rule
    of ``Outbox.give_back_unstarted``). It was given back uncounted, and its failed
    first attempt ran again."""
    from realtime_batch.engine._cancels import CancelRequests
    from realtime_batch.engine._direct import DirectWorker
    from realtime_batch.engine._process import WorkerSettings
    from realtime_batch.engine._supervise import WHY_TIMEOUT

    def task(task_id: str) -> bytes:
        return encode_task(TaskRecord(session="s", job="j", task=task_id, command="noop.py",
                                      reply_to=ReplyTo("results", "s")))  # fmt: skip

    with open_transport(f"memory://lost-{uuid.uuid4().hex}") as t:
        outbox = _KeptOutbox(t)
        engine = DirectWorker(WorkerSettings(str(tmp_path), str(tmp_path), "engine-1"),
                              "zmq://127.0.0.1:1", "q", 2, {}, t, outbox, -1, -1, 4096, 0.1,
                              CancelRequests())  # fmt: skip
        worker_side = Ledger(2, 4096, fd=os.dup(engine.ledger.fd))
        try:
            timed, retry = (Delivery(Message(task(name)), "q", 1, 1000.0, name)
                            for name in ("timed", "retry"))  # fmt: skip
            slots = dict(zip(("timed", "retry"), worker_side.hold([timed, retry]), strict=True))
            worker_side.retried(slots["retry"])  # its attempt 1 failed here, backing off
            worker_side.start(slots["timed"], timed.message.body, 1.0, 1)  # run 1
            worker_side.stop()  # it ended at the last moment; its result not sent yet
            worker_side.start(slots["retry"], retry.message.body, 0.0, 2)  # run 2
            engine.worker = _DeadWorker()  # type: ignore[assignment]
            engine.draining = True  # no new worker
            engine._lost(WHY_TIMEOUT, 1)  # killed for run 1
        finally:
            worker_side.close()
            engine.ledger.close()
        actions = {e.delivery.lock_token: e.action for e in outbox.kept}
        assert actions == {"retry": "abandon", "timed": "give_back"}


def test_a_lease_found_lost_is_not_renewed_again(tmp_path, monkeypatch):
    """A renewal answered "lease lost" is final: relay mode stops renewing that delivery
    (``Held.renewal_failed``); the direct engine asked the broker again every second
    until the task ended. Other renewal errors are still retried a second later."""
    import time

    from realtime_batch.engine import _direct
    from realtime_batch.engine._cancels import CancelRequests
    from realtime_batch.engine._direct import DirectWorker
    from realtime_batch.engine._process import WorkerSettings
    from realtime_batch.transport import LockLostError, TransportError

    class Renewals:
        calls: list[str] = []

        def renew_lock(self, delivery):
            self.calls.append(delivery.lock_token)
            if delivery.lock_token == "lost":
                raise LockLostError("the lease is gone")
            raise TransportError("the broker did not answer")

    clock = [time.time()]
    monkeypatch.setattr(_direct.time, "time", lambda: clock[0])
    with open_transport(f"memory://renew-{uuid.uuid4().hex}") as t:
        renewals = Renewals()
        engine = DirectWorker(WorkerSettings(str(tmp_path), str(tmp_path), "engine-1"),
                              "zmq://127.0.0.1:1", "q", 2, {}, renewals, _KeptOutbox(t), -1, -1,
                              4096, 0.1, CancelRequests())  # fmt: skip
        worker_side = Ledger(2, 4096, fd=os.dup(engine.ledger.fd))
        try:
            worker_side.hold([Delivery(Message(b"x"), "q", 1, clock[0] + 30.0, token)
                              for token in ("lost", "flaky")])  # fmt: skip
            for _ in range(3):
                clock[0] += 20.0  # each renewal is due
                engine._renew(engine.ledger.snapshot())
        finally:
            worker_side.close()
            engine.ledger.close()
    assert renewals.calls.count("lost") == 1
    assert renewals.calls.count("flaky") == 3
