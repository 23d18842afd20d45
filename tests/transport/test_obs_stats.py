"""Transport.stats(): one record shape from memory and zmq (an in-process broker), engine
reports carried by heartbeats, the STATS wire command, and refusals."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import orjson
import pytest
from obs_helpers import wait_for

from realtime_batch.transport import (
    Message,
    StatsUnavailableError,
    Transport,
    TransportError,
    open_transport,
)
from realtime_batch.transport.memory import MemoryTransport
from realtime_batch.transport.stats import (
    LATENCY_BUCKETS,
    MAX_FAILURES,
    EngineTable,
    TransportStats,
)
from realtime_batch.transport.zeromq import wire
from realtime_batch.transport.zeromq.broker import Broker


@pytest.fixture
def zmq_url() -> Iterator[str]:
    broker = Broker("tcp://127.0.0.1:0", heartbeat_interval=0.1)
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    try:
        yield "zmq://" + broker.endpoint.removeprefix("tcp://")
    finally:
        broker.stop()
        thread.join(5)
        broker.close()


@pytest.fixture(params=["memory", "zmq"])
def transport(request, zmq_url) -> Iterator[Transport]:
    if request.param == "memory":
        url = f"memory://stats-{uuid.uuid4().hex}"
        t = open_transport(url)
    else:
        t = open_transport(zmq_url, heartbeat_interval=0.1)
    try:
        yield t
    finally:
        t.close()


def test_stats_counts_depth_leases_dead_letters_and_mailboxes(transport):
    transport.declare_queue("tasks", max_delivery_count=1)
    transport.declare_queue("results", grouped=True)
    transport.send("tasks", [Message(b"a"), Message(b"b"), Message(b"c"), Message(b"d")])
    transport.send("results", [Message(b"r1", group="s1"), Message(b"r2", group="s1"),
                               Message(b"r3", group="s2")])  # fmt: skip
    first, second, third = transport.receive("tasks", max_messages=3, timeout=5)
    transport.complete(first)
    transport.dead_letter(second, "Bad", "for the test")
    transport.abandon(third)  # max_delivery_count=1: straight to the dead-letter queue

    stats = transport.stats()
    queues = {q.name: q for q in stats.queues}
    assert set(queues) == {"tasks", "results"}  # dead-letter queues fold into their queue
    tasks = queues["tasks"]
    assert (tasks.depth, tasks.leased, tasks.dead_letter) == (1, 0, 2)
    assert (tasks.sent, tasks.completed, tasks.dead_lettered) == (4, 1, 2)
    assert tasks.redelivered == 1
    assert sum(tasks.latency_buckets) == 1
    assert len(tasks.latency_buckets) == len(LATENCY_BUCKETS) + 1
    assert tasks.latency_sum >= 0
    [leased] = transport.receive("tasks", timeout=5)
    assert {q.name: q for q in transport.stats().queues}["tasks"].leased == 1
    transport.complete(leased)
    mailboxes = {(m.queue, m.group): m.depth for m in stats.mailboxes}
    assert mailboxes == {("results", "s1"): 2, ("results", "s2"): 1}
    assert queues["results"].groups == 2
    assert stats.uptime is not None and stats.uptime >= 0


def test_engine_reports_reach_the_stats(transport):
    transport.report_engine({"id": "node-a-1", "host": "node-a", "state": "busy",
                             "task": "t-42", "done": 7, "restarts": 2})  # fmt: skip
    # the worker's part (direct mode) arrives separately and is merged by engine id
    failure = {"task": "t-9", "type": "ValueError", "message": "no", "traceback": "Traceback\n",
               "at": 12.5}  # fmt: skip
    transport.report_engine({"id": "node-a-1", "source": "worker", "failed": 1,
                             "failures": [failure]})  # fmt: skip

    def engine():
        engines = transport.stats().engines
        return engines[0] if engines and engines[0].tasks_failed else None

    seen = wait_for(engine, "the engine's report")
    assert (seen.id, seen.host, seen.state, seen.task, seen.tasks_done, seen.worker_restarts) == (
        "node-a-1", "node-a", "busy", "t-42", 7, 2,
    )  # fmt: skip
    from realtime_batch.transport.metrics import StatsCollector

    stats = transport.stats()
    [family] = [m for m in StatsCollector(lambda: stats).collect()
                if m.name == "rtbatch_engine_worker_restarts"]  # fmt: skip
    assert [(s.labels, s.value) for s in family.samples if s.name.endswith("_total")] == [
        ({"engine": "node-a-1"}, 2)
    ]
    [f] = seen.failures
    assert (f.task, f.type, f.message, f.traceback, f.engine) == (
        "t-9", "ValueError", "no", "Traceback\n", "node-a-1",
    )  # fmt: skip
    assert seen.last_seen > 0


def test_stats_record_round_trips_through_json(transport):
    transport.declare_queue("tasks")
    transport.send("tasks", Message(b"x", group="g"))
    transport.report_engine({"id": "e", "state": "idle", "failed": 0, "failures": []})
    wait_for(lambda: transport.stats().engines, "the engine's report")
    stats = transport.stats()
    again = TransportStats.from_dict(orjson.loads(orjson.dumps(stats.to_dict())))
    assert again == stats


def test_zmq_stats_name_the_client_url_and_count_connections(zmq_url):
    with open_transport(zmq_url) as t:
        t.declare_queue("tasks")
        stats = t.stats()
    assert stats.transport == "zmq"
    assert stats.url == zmq_url
    assert stats.connections >= 1
    assert stats.requests >= 1


def test_an_engine_that_closes_is_stopped_and_a_silent_one_gone(zmq_url):
    closing = open_transport(zmq_url, heartbeat_interval=0.1)
    closing.report_engine({"id": "e-closed", "state": "idle", "done": 0})
    silent = open_transport(zmq_url, heartbeat_interval=0.1)
    silent.report_engine({"id": "e-silent", "state": "busy", "task": "t1", "done": 0})

    def states():
        return {e.id: (e.state, e.task) for e in watcher.stats().engines}

    with open_transport(zmq_url) as watcher:
        wait_for(lambda: len(watcher.stats().engines) == 2, "both reports")
        closing.close()  # says goodbye (BYE)
        wait_for(lambda: states()["e-closed"][0] == "stopped", "'stopped'")
        silent._context.destroy(linger=0)  # dies without a goodbye: heartbeats stop
        assert wait_for(lambda: states()["e-silent"] == ("gone", None), "'gone'")
    silent.close()


def test_base_transport_refuses_stats_with_a_transport_error():
    class Bare(MemoryTransport):
        stats = Transport.stats

    t = Bare("memory://bare")
    with pytest.raises(StatsUnavailableError, match="Bare cannot report statistics") as info:
        t.stats()
    assert isinstance(info.value, TransportError)
    assert isinstance(info.value, NotImplementedError)
    Transport.report_engine(t, {"id": "x"})  # the default drops a report quietly
    t.close()


@pytest.mark.parametrize(
    "report",
    [None, "text", {"no": "id"}, {"id": 5}, ["id", "x"]],
)
def test_engine_table_ignores_what_is_not_a_report(report):
    table = EngineTable()
    assert table.update(report, 1.0) is False
    assert table.stats(1.0) == []


def test_engine_table_drops_fields_of_the_wrong_type_and_cuts_long_ones():
    table = EngineTable()
    report = {"id": "e" * 1000, "host": 5, "state": "busy", "task": 7, "done": -3,
              "busy": 5.0, "failed": 2,
              "failures": [{"task": "t", "traceback": "x" * 100_000}] * (MAX_FAILURES + 5)
              + ["junk"]}  # fmt: skip
    assert table.update(report, 1.0)
    [engine] = table.stats(1.0)
    assert len(engine.id) == 200
    assert (engine.host, engine.task, engine.tasks_done, engine.busy_ratio) == ("", None, 0, None)
    assert len(engine.failures) <= MAX_FAILURES
    assert all(len(f.traceback) <= 4000 for f in engine.failures)


def test_engine_table_keeps_a_bounded_number_of_engines(monkeypatch):
    monkeypatch.setattr("realtime_batch.transport.stats.MAX_ENGINES", 3)
    table = EngineTable()
    for name in "abc":
        assert table.update({"id": name}, 1.0)
    assert table.update({"id": "d"}, 2.0) is False  # full: a new id is dropped
    assert table.update({"id": "a", "state": "busy"}, 2.0)  # a known one still updates
    assert table.update({"id": "d"}, 1000.0)  # the silent ones made room
    assert [e.id for e in table.stats(1000.0)] == ["d"]


def test_heartbeat_takes_a_report_and_nothing_else():
    ok = wire.decode_request([wire.encode_request(wire.HEARTBEAT, 1, 1.0, {"id": "e"})], 100)
    assert ok.args == [1.0, {"id": "e"}]
    for bad in ([1.0, "x"], [1.0, {"id": "e"}, 3]):
        with pytest.raises(wire.FrameError, match="bad arguments for heartbeat"):
            wire.decode_request([wire.encode_request(wire.HEARTBEAT, 1, *bad)], 100)
    with pytest.raises(wire.FrameError, match="bad arguments for stats"):
        wire.decode_request([wire.encode_request(wire.STATS, 1, "extra")], 100)


def test_zmq_stats_and_metrics_count_the_requests_the_broker_refused(zmq_url):
    """The broker counted malformed requests but told no one: a client of another
    version, or someone probing the port, went unseen."""
    import zmq

    from realtime_batch.status import render
    from realtime_batch.transport.metrics import StatsCollector

    with open_transport(zmq_url) as t:
        assert t.stats().bad_requests == 0
        context = zmq.Context()
        probe = context.socket(zmq.DEALER)
        probe.setsockopt(zmq.LINGER, 0)
        try:
            probe.connect("tcp://" + zmq_url.removeprefix("zmq://"))
            for junk in ([b"not a request"], [b"\x01", b"\x02", b"\x03"]):
                probe.send_multipart(junk)
                assert probe.poll(5000), "the broker answers a malformed request"
                probe.recv_multipart()  # its error reply
        finally:
            probe.close()
            context.term()
        stats = t.stats()
    assert stats.bad_requests == 2
    [family] = [m for m in StatsCollector(lambda: stats).collect()
                if m.name == "rtbatch_broker_bad_requests"]  # fmt: skip
    assert [sample.value for sample in family.samples if sample.name.endswith("_total")] == [2]
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(stats))
    assert "malformed 2" in console.export_text()
