"""One task's value never takes an engine down (issue #15, high).

A task returning an instance of a class defined in its own module used to crash
the relay engine in ``pickle.loads`` (the class cannot be imported outside the
worker): the session waited forever. Now the worker checks the value with the
protocol's JSON rule and the task gets ``UnserializableResultError`` on its
first attempt, in relay mode (memory://) and direct mode (zmq://), and the
engine goes on serving.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from engine_helpers import Harness, open_harness

import realtime_batch as rb
from realtime_batch.engine._process import WorkerProcess, WorkerSettings
from realtime_batch.protocol import decode_value

pytestmark = pytest.mark.usefixtures("no_leaked_processes")

_TASKS = {
    "own_class.py": """
        class Point:
            def __init__(self, x):
                self.x = x

        def run(x):
            return Point(x)
    """,
    "garbage_frame.py": '''
        """Writes a frame to the worker's result pipe that is not an answer."""
        import sys
        from multiprocessing.connection import Connection

        def run():
            fds = sys.argv[sys.argv.index("--fds") + 1].split(",")
            Connection(int(fds[1]), readable=False).send_bytes(b"\\x80\\x05not a frame")
            return "after garbage"
    ''',
    "echo.py": """
        def run(x):
            return x
    """,
}


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, source in _TASKS.items():
        (tasks / name).write_text(textwrap.dedent(source))
    return tasks


@pytest.fixture(params=["relay", "direct"])
def harness(request: pytest.FixtureRequest, tmp_path: Path, tasks_dir: Path) -> Iterator[Harness]:
    with open_harness(request.param, tasks_dir, tmp_path / "wd") as h:
        yield h


def test_value_of_a_task_module_class_is_an_error_result(harness):
    engine = harness.engine()
    with rb.Session(harness.url, task_queue=harness.queue) as session:
        future = session.submit("own_class.py", 1)
        with pytest.raises(rb.TaskError) as info:
            future.result(timeout=30)
        assert info.value.remote_type == "UnserializableResultError"
        assert "Point" in info.value.remote_message
        assert info.value.attempt == 1
        assert session.submit("echo.py", 42).result(timeout=30) == 42  # still serving
    assert engine.error is None and engine.worker_pid is not None


def test_one_engine_survives_many_such_values(harness):
    harness.engine(prefetch=4)
    with rb.Session(harness.url, task_queue=harness.queue) as session:
        bad = [session.submit("own_class.py", i) for i in range(5)]
        good = [session.submit("echo.py", i) for i in range(5)]
        assert [f.result(timeout=30) for f in good] == list(range(5))
        for future in bad:
            assert future.exception(timeout=30).remote_type == "UnserializableResultError"


def test_a_frame_that_is_not_an_answer_becomes_an_error_result(tmp_path, tasks_dir):
    """Relay mode only: a direct worker answers through the broker, not a pipe."""
    work = tmp_path / "wd"
    work.mkdir()
    harness = Harness(tasks_dir, work)
    try:
        harness.engine()
        harness.submit("garbage_frame.py")
        harness.submit("echo.py", "next")
        results = sorted(harness.results(2).values(), key=lambda r: r.value or "")
        errors = [r for r in results if r.error is not None]
        assert [r.value for r in results if r.ok] == ["next"]
        assert len(errors) == 1 and errors[0].error.type == "WorkerProtocolError"
        assert harness.engines[0].error is None
    finally:
        harness.close()


def test_the_worker_answers_in_msgpack_not_pickle(tmp_path, tasks_dir):
    worker = WorkerProcess(WorkerSettings(str(tasks_dir), str(tmp_path), "e1"))
    worker.start()
    try:
        worker.send([(1, "py", str(tasks_dir / "own_class.py"), [3], {}, None, "t1", 1)])
        assert worker.results is not None and worker.results.poll(30)
        frame = worker.results.recv_bytes()
        # MessagePack (protocol v2's values), not pickle: nothing the engine decodes runs code
        assert not frame.startswith(b"\x80"), frame  # a pickle starts with PROTO
        answer = decode_value(frame)
        assert answer[:3] == [1, "error", None], answer
        assert answer[3][0] == "UnserializableResultError"
    finally:
        worker.stop()
