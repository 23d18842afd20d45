"""Ray: a local cluster started by ``ray.init(num_cpus=2)``, dashboard off."""

from __future__ import annotations

import os
from typing import Any

from benchmarks import ROOT, peer_tasks
from benchmarks.systems.base import WORKERS, System, SystemUnavailableError

__all__ = ["RaySystem"]

RESULT_TIMEOUT = 600.0


class RaySystem(System):
    """Ray tasks (``@ray.remote`` functions) on a 2-CPU local cluster."""

    name = "ray"
    description = "ray.init(num_cpus=2), local, dashboard off; tasks are @ray.remote functions"

    def __init__(self) -> None:
        self._remote: dict[str, Any] = {}
        self._total_of: Any = None
        self._started = False

    def start(self) -> None:
        try:
            import ray
        except ImportError as exc:
            raise SystemUnavailableError(f"ray is not installed: {exc}") from exc
        # workers import benchmarks.peer_tasks by name: make the checkout importable
        paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            num_cpus=WORKERS,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
            configure_logging=True,
        )
        self._started = True
        self._remote = {name: ray.remote(fn) for name, fn in peer_tasks.TASKS.items()}
        self._total_of = ray.remote(_total_of)

    def call(self, task: str, *args: Any) -> Any:
        import ray

        return ray.get(self._remote[task].remote(*args), timeout=RESULT_TIMEOUT)

    def run_all(self, task: str, args_list: list[tuple[Any, ...]]) -> None:
        import ray

        remote = self._remote[task]
        refs = [remote.remote(*args) for args in args_list]
        ray.get(refs, timeout=RESULT_TIMEOUT)

    def run_workflow(self, fan_out: int) -> Any:
        import ray

        # Ray resolves references passed as top-level arguments only: spread them
        parts = [self._remote["echo"].remote(i) for i in range(fan_out)]
        return ray.get(self._total_of.remote(*parts), timeout=RESULT_TIMEOUT)

    def submit_outstanding(self, task: str, count: int) -> None:
        remote = self._remote[task]
        self._outstanding = [remote.remote() for _ in range(count)]

    def stop(self) -> None:
        if self._started:
            import ray

            self._outstanding = []
            ray.shutdown()
            self._started = False

    def versions(self) -> dict[str, str]:
        import ray

        return {"ray": ray.__version__}


def _total_of(*values: float) -> float:
    """``peer_tasks.total`` over references spread as arguments (Ray resolves those)."""
    return peer_tasks.total(list(values))
