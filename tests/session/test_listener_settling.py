"""How the session's listener completes the result deliveries it has dispatched.

Where the transport can settle and receive in one request (``zmq://``), a batch's
deliveries are completed by the request that receives the next batch; elsewhere
(``memory://``, Service Bus) they are completed by ``complete_many`` as soon as their
futures are resolved, and ``settle_and_receive`` (the base class's three calls) is not
used. The capability decides, not the presence of the method (#17).
"""

from __future__ import annotations

import threading
import time
import uuid

from realtime_batch.orchestrator._listening import Listener
from realtime_batch.protocol import ResultRecord, encode_result
from realtime_batch.transport import Message, open_transport

_RESULTS = "results"


def _result(task: str, session: str) -> Message:
    now = time.time()
    record = ResultRecord(
        session=session, job="job", task=task, status="ok", value=1, error=None,
        engine="e1", attempt=1, started_at=now, finished_at=now,
    )  # fmt: skip
    return Message(encode_result(record), group=session, correlation_id=task)


def test_without_the_combined_request_results_are_completed_by_complete_many():
    transport = open_transport(f"memory://listener-{uuid.uuid4().hex}")
    calls: list[str] = []
    complete_many = transport.complete_many
    settle_and_receive = transport.settle_and_receive

    def counting_complete_many(deliveries):
        calls.append(f"complete_many {len(list(deliveries))}")
        return complete_many(deliveries)

    def counting_settle_and_receive(*args, **kwargs):
        calls.append("settle_and_receive")
        return settle_and_receive(*args, **kwargs)

    transport.complete_many = counting_complete_many  # type: ignore[method-assign]
    transport.settle_and_receive = counting_settle_and_receive  # type: ignore[method-assign]
    assert not transport.capabilities.settle_and_receive
    transport.declare_queue(_RESULTS, grouped=True)
    session = "s-" + uuid.uuid4().hex
    got: list[str] = []
    closed = threading.Event()
    listener = Listener(
        transport, _RESULTS, session, closed,
        on_results=lambda records: got.extend(r.task for r in records),
        on_notice=lambda _m: None, on_tick=lambda: None, name="listener-test",
    )  # fmt: skip
    listener.start()
    try:
        transport.send(_RESULTS, [_result("t1", session), _result("t2", session)])
        end = time.monotonic() + 10
        while (len(got) < 2 or not calls) and time.monotonic() < end:
            time.sleep(0.01)
    finally:
        closed.set()
        listener.join(5.0)
    assert sorted(got) == ["t1", "t2"]
    assert "settle_and_receive" not in calls
    assert sum(int(c.split()[1]) for c in calls) == 2, calls
    # nothing left leased or waiting: both deliveries were completed
    assert transport.receive(_RESULTS, group=session, timeout=0) == []
    stats = transport.stats()
    leased = sum(q.leased for q in stats.queues if q.name == _RESULTS)
    assert leased == 0, stats
    transport.close()
