"""Dask distributed: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``."""

from __future__ import annotations

import logging
from typing import Any

from benchmarks import peer_tasks
from benchmarks.systems.base import WORKERS, System, SystemUnavailableError

__all__ = ["DaskSystem"]

RESULT_TIMEOUT = 600.0


class DaskSystem(System):
    """A local Dask cluster: scheduler in this process, two worker processes (with nannies).

    Many tasks are submitted with ``client.map`` (Dask's batch API; a ``submit`` loop is
    much slower); every task is ``pure=False`` so nothing is deduplicated.
    """

    name = "dask"
    description = (
        "LocalCluster(n_workers=2, threads_per_worker=1, processes=True), "
        "scheduler in the client process; batches via client.map"
    )

    def __init__(self) -> None:
        self._cluster: Any = None
        self._client: Any = None
        self._outstanding: list[Any] = []

    def start(self) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise SystemUnavailableError(f"dask[distributed] is not installed: {exc}") from exc
        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self._cluster = LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        )
        self._client = Client(self._cluster)

    def call(self, task: str, *args: Any) -> Any:
        fn = peer_tasks.TASKS[task]
        return self._client.submit(fn, *args, pure=False).result(RESULT_TIMEOUT)

    def run_all(self, task: str, args_list: list[tuple[Any, ...]]) -> None:
        fn = peer_tasks.TASKS[task]
        columns = list(zip(*args_list, strict=True)) if args_list and args_list[0] else []
        if columns:
            futures = self._client.map(fn, *columns, pure=False)
        else:
            futures = self._client.map(lambda _: fn(), range(len(args_list)), pure=False)
        self._client.gather(futures)

    def run_workflow(self, fan_out: int) -> Any:
        parts = self._client.map(peer_tasks.echo, range(fan_out), pure=False)
        total = self._client.submit(peer_tasks.total, parts, pure=False)
        return total.result(RESULT_TIMEOUT)

    def submit_outstanding(self, task: str, count: int) -> None:
        fn = peer_tasks.TASKS[task]
        self._outstanding = self._client.map(lambda _: fn(), range(count), pure=False)

    def stop(self) -> None:
        self._outstanding = []
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def versions(self) -> dict[str, str]:
        import dask
        import distributed

        return {"dask": dask.__version__, "distributed": distributed.__version__}
