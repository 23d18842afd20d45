"""Celery: Redis broker and result backend, one worker with two prefork processes.

The benchmark starts its own ``redis-server`` on a free loopback port (installing
the Debian package when it is missing) and stops it with the worker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

from benchmarks.procs import Child, child_env, free_port
from benchmarks.setup_env import ensure_redis_server
from benchmarks.systems.base import WORKERS, System, SystemUnavailableError

__all__ = ["CelerySystem"]

RESULT_TIMEOUT = 600.0


class CelerySystem(System):
    """``celery worker --concurrency 2 --pool prefork`` against a private redis-server."""

    name = "celery"
    description = (
        "Celery worker, --concurrency 2 --pool prefork, Redis broker + result backend "
        "(a redis-server started for the run)"
    )

    def __init__(self) -> None:
        self._redis: Child | None = None
        self._worker: Child | None = None
        self._tasks: dict[str, Any] = {}
        self._outstanding: list[Any] = []

    def start(self) -> None:
        try:
            import celery  # noqa: F401
            import redis  # noqa: F401
        except ImportError as exc:
            raise SystemUnavailableError(f"celery[redis] is not installed: {exc}") from exc
        server = ensure_redis_server()
        port = free_port()
        self._redis = Child(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            ready_contains="Ready to accept connections",
        )
        self._redis.wait_ready(30)
        url = f"redis://127.0.0.1:{port}/0"
        os.environ["BENCH_REDIS_URL"] = url
        sys.modules.pop("benchmarks.systems.celery_app", None)  # rebind to this URL
        from benchmarks.systems import celery_app

        self._tasks = celery_app.TASKS
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.systems.celery_app",
            "worker",
            "--concurrency",
            str(WORKERS),
            "--pool",
            "prefork",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        self._worker = Child(
            argv, env=child_env({"BENCH_REDIS_URL": url}), ready_contains=" ready."
        )
        self._worker.wait_ready(60)

    def call(self, task: str, *args: Any) -> Any:
        return self._tasks[task].apply_async(args).get(timeout=RESULT_TIMEOUT)

    def run_all(self, task: str, args_list: list[tuple[Any, ...]]) -> None:
        from celery.result import ResultSet

        fn = self._tasks[task]
        results = ResultSet([fn.apply_async(args) for args in args_list])
        results.join_native(timeout=RESULT_TIMEOUT)

    def submit_outstanding(self, task: str, count: int) -> None:
        fn = self._tasks[task]
        self._outstanding = [fn.apply_async() for _ in range(count)]

    def stop(self) -> None:
        self._outstanding = []
        if self._tasks:
            next(iter(self._tasks.values())).app.close()
            self._tasks = {}
        if self._worker is not None:
            self._worker.stop(3.0)
            self._worker = None
        if self._redis is not None:
            self._redis.stop(3.0)
            self._redis = None

    def versions(self) -> dict[str, str]:
        import celery
        import kombu
        import redis

        found = {
            "celery": celery.__version__,
            "kombu": kombu.__version__,
            "redis-py": redis.__version__,
        }
        server = shutil.which("redis-server")
        if server:
            out = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
            found["redis-server"] = next(
                (w.removeprefix("v=") for w in out.split() if w.startswith("v=")), out.strip()
            )
        return found
