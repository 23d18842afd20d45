"""Helpers for the engine tests: an in-process harness over memory://, a zmq broker process,
or the Service Bus stand-in (``tests/servicebus_standin.py``)."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from realtime_batch.engine import Engine
from realtime_batch.protocol import ReplyTo, ResultRecord, TaskRecord, decode_result, encode_task
from realtime_batch.transport import Message, open_transport

TASKS = Path(__file__).resolve().parent / "tasks"

#: Marks tests that build and run jars: the ``java`` marker, skipped without a JDK.
NEEDS_JDK = [
    pytest.mark.java,
    pytest.mark.skipif(
        not (shutil.which("javac") and shutil.which("java") and shutil.which("jar")),
        reason="no JDK (javac, java, jar) on PATH",
    ),
]
ROOT = Path(__file__).resolve().parents[2]


class Harness:
    """A transport, a results mailbox, and engines started on it.

    Relay mode (``url`` None): one memory:// namespace, engines given the open transport.
    Direct mode: a ``zmq://`` broker's URL, engines given the URL (so their task
    workers take tasks from the broker themselves).
    Service Bus mode (``servicebus=True``, ``url`` a stand-in's connection string): engines
    given the connection string, each with its own connection, in relay mode (a lease
    belongs to its receiver link); queues named per harness, since one stand-in serves
    many tests, and the results queue grouped (sessions), as Service Bus requires.
    """

    def __init__(
        self, tasks_dir: Path, work_dir: Path, url: str | None = None, *, servicebus: bool = False
    ) -> None:
        self.servicebus = servicebus
        self.direct = url is not None and not servicebus
        self.url = url or f"memory://engine-test-{uuid.uuid4().hex}"
        self.transport = open_transport(self.url)
        self.tasks_dir = tasks_dir
        self.work_dir = work_dir
        suffix = f"-{uuid.uuid4().hex[:8]}" if servicebus else ""
        self.queue = "tasks" + suffix
        self.results_queue = "results" + suffix
        self.group = f"client-{uuid.uuid4().hex[:8]}"
        self.transport.declare_queue(self.results_queue, grouped=servicebus)
        self.engines: list[Engine] = []

    def engine(self, **options: Any) -> Engine:
        options.setdefault("tasks_dir", self.tasks_dir)
        options.setdefault("work_dir", self.work_dir)
        tasks_dir = options.pop("tasks_dir")
        transport = self.url if self.direct or self.servicebus else self.transport
        engine = Engine(transport, self.queue, tasks_dir, **options)
        self.engines.append(engine)
        return engine.start()

    def task(self, command: str, *args: Any, **options: Any) -> TaskRecord:
        kwargs = options.pop("kwargs", {})
        return TaskRecord(
            session="s1",
            job="j1",
            task=options.pop("task_id", uuid.uuid4().hex),
            command=command,
            args=list(args),
            kwargs=kwargs,
            reply_to=ReplyTo(self.results_queue, self.group),
            **options,
        )

    def submit(self, command: str, *args: Any, **options: Any) -> str:
        record = self.task(command, *args, **options)
        self.transport.send(self.queue, Message(encode_task(record)))
        return record.task

    def send_raw(self, body: bytes) -> None:
        self.transport.send(self.queue, Message(body))

    def results(self, count: int, timeout: float = 30.0) -> dict[str, ResultRecord]:
        """Exactly ``count`` results (by task id); fails on a timeout or a duplicate."""
        got: dict[str, ResultRecord] = {}
        end = time.monotonic() + timeout
        while len(got) < count:
            left = end - time.monotonic()
            assert left > 0, f"only {len(got)} of {count} results arrived: {got}"
            for d in self.transport.receive(
                self.results_queue, max_messages=count, timeout=left, group=self.group
            ):
                record = decode_result(d.message.body)
                assert d.message.correlation_id == record.task
                assert record.task not in got, f"duplicate result for {record.task}"
                got[record.task] = record
                self.transport.complete(d)
        return got

    def result(self, timeout: float = 30.0) -> ResultRecord:
        return next(iter(self.results(1, timeout).values()))

    def assert_no_result(self, wait: float = 0.3) -> None:
        extra = self.transport.receive(self.results_queue, timeout=wait, group=self.group)
        assert not extra, [decode_result(d.message.body) for d in extra]

    def close(self) -> None:
        for engine in self.engines:
            engine.stop(timeout=30)
        self.transport.close()


#: The harness's modes: every engine scenario runs in the first two; ``servicebus`` only
#: where a test asks for it (the ``servicebus_mode`` marker, see conftest.py).
MODES = ("relay", "direct")


@contextlib.contextmanager
def open_harness(
    mode: str, tasks_dir: Path, work_dir: Path, *, standin_url: str | None = None
) -> Iterator[Harness]:
    """A ``Harness`` in ``relay`` mode (memory://), ``direct`` mode (its own zmq broker)
    or ``servicebus`` mode (relay over the Service Bus stand-in at ``standin_url``,
    started by the caller and shared: each harness names its own queues)."""
    work_dir.mkdir(exist_ok=True)
    if mode == "servicebus":
        assert standin_url is not None, "servicebus mode needs a running stand-in"
        h = Harness(tasks_dir, work_dir, standin_url, servicebus=True)
        try:
            yield h
        finally:
            h.close()
        return
    broker = Broker() if mode == "direct" else None
    try:
        h = Harness(tasks_dir, work_dir, None if broker is None else broker.url)
        try:
            yield h
        finally:
            h.close()
    finally:
        if broker is not None:
            broker.stop()


class Broker:
    """A ``python -m realtime_batch.transport.zeromq`` process on a free loopback port."""

    def __init__(self) -> None:
        cmd = [sys.executable, "-m", "realtime_batch.transport.zeromq", "--bind",
               "tcp://127.0.0.1:0"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = read_line(self.proc, 30)
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"broker did not start (got {line!r})")
        self.url = "zmq://" + line.split()[1].removeprefix("tcp://")

    def stop(self) -> None:
        stop_process(self.proc)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of ``proc`` within ``timeout`` seconds ("" if none)."""
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            return proc.stdout.readline()
    return ""


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> int | None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode
