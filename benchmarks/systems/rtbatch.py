"""realtime-batch under test: a ``LocalPool`` of two engines and one client ``Session``.

Three transports, one code path: ``memory://`` (engines as threads in this
process, each running tasks in its worker process), ``zmq://`` (the broker and the
engines as processes) and the Service Bus stand-in of ``tests/`` (an AMQP 1.0
server process, the engines connect to it through the azure-servicebus SDK).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import sys
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import ROOT
from benchmarks.procs import Child, free_port
from benchmarks.systems.base import WORKERS, NotApplicableError, System, SystemUnavailableError

__all__ = ["TASK_FILES", "RtbatchMemory", "RtbatchServiceBus", "RtbatchSystem", "RtbatchZmq"]

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
TASK_FILES = sorted(TASKS_DIR.glob("*.py"))
RESULT_TIMEOUT = 120.0


def noop_jar() -> Path | str:
    """``noop.jar`` (the java-noop workload), built once into the user's cache; or why not."""
    from realtime_batch.engine.java import JavaTaskError, build_jar

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "realtime-batch")
    try:
        return build_jar(TASKS_DIR / "JavaNoop.java", cache / "bench" / "noop.jar")
    except (JavaTaskError, OSError) as exc:  # JavaNotFoundError: no JDK
        return f"no Java tasks: {exc}"


class RtbatchSystem(System):
    """A LocalPool with two engines on ``url`` and a Session on it."""

    url = ""

    def __init__(self) -> None:
        self.pool: Any = None
        self.session: Any = None
        self._no_java = ""

    def transport_url(self) -> str:
        """The transport URL handed to LocalPool."""
        return self.url

    def start(self) -> None:
        from realtime_batch.emulator.local_pool import LocalPool
        from realtime_batch.orchestrator.session import Session

        jar = noop_jar()
        self._no_java = jar if isinstance(jar, str) else ""
        files = [*TASK_FILES, *([] if isinstance(jar, str) else [jar])]
        self.pool = LocalPool(engines=WORKERS, transport=self.transport_url(), task_files=files)
        self.session = Session(self.pool, keep_results=False)

    def _submit(self, task: str, args: tuple[Any, ...]) -> concurrent.futures.Future:
        from realtime_batch.transport import MessageTooLargeError

        try:
            return self.session.submit(f"{task}.py", *args)
        except MessageTooLargeError as exc:
            raise NotApplicableError(str(exc)) from exc

    def call(self, task: str, *args: Any) -> Any:
        return self._submit(task, args).result(RESULT_TIMEOUT)

    def call_jar(self, jar: str, *args: Any) -> Any:
        if self._no_java:
            raise NotApplicableError(self._no_java)
        return self.session.submit(jar, *args).result(RESULT_TIMEOUT)

    def run_all(self, task: str, args_list: list[tuple[Any, ...]]) -> None:
        futures = [self._submit(task, args) for args in args_list]
        done, not_done = concurrent.futures.wait(futures, timeout=max(RESULT_TIMEOUT, 600.0))
        if not_done:
            raise TimeoutError(f"{len(not_done)} of {len(futures)} tasks had no result")
        for future in done:
            future.result()

    def run_workflow(self, fan_out: int) -> Any:
        parts = self.session.map("echo.py", range(fan_out))
        return self.session.submit("total.py", parts).result(RESULT_TIMEOUT)

    def submit_outstanding(self, task: str, count: int) -> None:
        # the engines stop first (resize(0)), so every task stays queued and outstanding;
        # this measures the same client state as a long task, without the stop grace
        self.pool.resize(0)
        for _ in range(count):
            self._submit("noop", ())

    def stop(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def versions(self) -> dict[str, str]:
        return {"realtime-batch": metadata.version("realtime-batch")}


class RtbatchMemory(RtbatchSystem):
    """``memory://``: the transport and the engines live in the client process."""

    name = "rtbatch-memory"
    description = "LocalPool, memory:// transport, 2 engine threads in the client process"

    def transport_url(self) -> str:
        return f"memory://bench-{uuid.uuid4().hex[:8]}"


class RtbatchZmq(RtbatchSystem):
    """``zmq://``: the broker and two engines as processes."""

    name = "rtbatch-zmq"
    description = "LocalPool, zmq:// broker process + 2 engine processes"
    url = "zmq://127.0.0.1:0"

    def versions(self) -> dict[str, str]:
        import zmq

        return {**super().versions(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}


class RtbatchServiceBus(RtbatchSystem):
    """The Service Bus backend against the AMQP stand-in of ``tests/``."""

    name = "rtbatch-servicebus"
    description = "LocalPool, Service Bus backend against tests/servicebus_standin.py"
    standin = ROOT / "tests" / "servicebus_standin.py"
    scale = 0.1
    scale_reason = "counts x0.1: the AMQP stand-in path is much slower than the others"

    def __init__(self) -> None:
        super().__init__()
        self._server: Child | None = None
        self._url = ""

    def transport_url(self) -> str:
        return self._url

    def start(self) -> None:
        if importlib.util.find_spec("realtime_batch.transport.servicebus") is None:
            raise SystemUnavailableError(
                "the Service Bus backend (transport/servicebus.py) is absent"
            )
        if not self.standin.is_file():
            raise SystemUnavailableError(f"the Service Bus stand-in {self.standin} is absent")
        if importlib.util.find_spec("proton") is None:
            raise SystemUnavailableError(
                "python-qpid-proton (the stand-in's AMQP) is not installed"
            )
        if str(self.standin.parent) not in sys.path:
            sys.path.insert(0, str(self.standin.parent))
        from servicebus_standin import standin_command  # trusts its admin API's certificate

        self._server = Child(standin_command(free_port()), ready_prefix="Endpoint=")
        self._url = self._server.wait_ready()
        try:
            super().start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def versions(self) -> dict[str, str]:
        found = {}
        for package in ("azure-servicebus", "python-qpid-proton"):
            try:
                found[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                pass
        return {**super().versions(), **found}
