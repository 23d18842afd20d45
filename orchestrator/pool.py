"""The ``Pool`` interface shared by the Azure Batch pool and the local emulator.

A pool hosts engines: long-lived processes that pull tasks from the transport.
``LocalPool`` (``realtime_batch.emulator``) runs them as local processes,
``AzureBatchPool`` (``realtime_batch.orchestrator.azure_batch``) as tasks on the
nodes of an Azure Batch pool. A :class:`~realtime_batch.orchestrator.session.Session`
only needs :attr:`Pool.transport_url` and :attr:`Pool.job` from either.

Lifecycle::

    pool = SomePool(...)
    pool.create()                 # or pool.use_existing("pool-id")
    job = pool.start_engines()    # engines pull from the transport's task queue
    ...                           # sessions submit tasks
    pool.resize(8)
    pool.repurpose(task_files=[...])  # new task files, engines restarted
    pool.delete()                 # or close(): release client resources only

Every pool is a context manager; leaving the ``with`` block calls :meth:`Pool.close`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from os import PathLike
from types import TracebackType
from typing import Any

__all__ = [
    "OrchestratorError",
    "Pool",
    "PoolNotFoundError",
    "PoolStateError",
    "StrPath",
    "UnsupportedPoolOperation",
]

StrPath = str | PathLike[str]


class OrchestratorError(Exception):
    """Base class of errors raised while managing pools, jobs and staging."""


class PoolNotFoundError(OrchestratorError, LookupError):
    """The named pool (or job) does not exist."""


class PoolStateError(OrchestratorError):
    """The pool is not in a state that allows the operation (e.g. not created yet)."""


class UnsupportedPoolOperation(OrchestratorError, NotImplementedError):
    """The pool backend does not support this operation (e.g. ``use_existing`` locally)."""


class Pool(ABC):
    """Abstract pool of engines.

    Subclasses implement the abstract members; the others have defaults that
    suit a backend without persistent pools or jobs (the emulator).
    """

    # ----------------------------------------------------------------- identity
    @property
    @abstractmethod
    def transport_url(self) -> str:
        """URL of the transport the engines pull from (what a client session opens)."""

    @property
    def transport_options(self) -> dict[str, Any]:
        """Options a client session opens ``transport_url`` with (e.g. its CURVE keys)."""
        return {}

    @property
    @abstractmethod
    def job(self) -> str | None:
        """Id of the job whose engines are running, or None before :meth:`start_engines`."""

    @property
    @abstractmethod
    def engines(self) -> int:
        """Number of engines the pool runs (or targets) right now."""

    # ---------------------------------------------------------------- lifecycle
    def create(self, **options: Any) -> Pool:
        """Create the pool's resources (nodes, staging area); return ``self``.

        The default does nothing, for backends that create everything in their
        constructor.
        """
        return self

    def use_existing(self, pool_id: str) -> Pool:
        """Attach to an existing pool by id instead of creating one; return ``self``.

        Raises:
            UnsupportedPoolOperation: the backend has no persistent pools.
        """
        raise UnsupportedPoolOperation(f"{type(self).__name__} cannot attach to pool {pool_id!r}")

    def repurpose(
        self,
        pool_id: str | None = None,
        task_files: Sequence[StrPath] = (),
        input_files: Sequence[StrPath] = (),
    ) -> Pool:
        """Stage new task/input files and restart the engines, keeping the nodes.

        Args:
            pool_id: pool to repurpose (backends with persistent pools); None = this pool.
            task_files: task modules or jars the engines may run.
            input_files: data files placed beside them.
        """
        raise UnsupportedPoolOperation(f"{type(self).__name__} cannot be repurposed")

    @abstractmethod
    def resize(self, engines: int) -> None:
        """Grow or shrink the pool to ``engines`` engines."""

    def delete(self) -> None:
        """Delete the pool's resources (nodes, jobs, staged files), then :meth:`close`."""
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release client-side resources; idempotent. Does not delete a persistent pool."""

    # ---------------------------------------------------------- engines and jobs
    @abstractmethod
    def start_engines(self, job: str | None = None) -> str:
        """Start the engines under ``job`` (a generated id when None); return the job id."""

    @abstractmethod
    def stage(self, files: Iterable[StrPath]) -> list[str]:
        """Make ``files`` available to the engines; return where each landed (name or URL)."""

    def jobs(self) -> list[str]:
        """Ids of this pool's jobs (ours only)."""
        return [self.job] if self.job else []

    def delete_job(self, job: str) -> None:
        """Delete one job and stop its engines."""
        raise UnsupportedPoolOperation(f"{type(self).__name__} cannot delete job {job!r}")

    def delete_jobs(self) -> int:
        """Delete every job of ours; return how many were deleted."""
        ids = self.jobs()
        for job_id in ids:
            self.delete_job(job_id)
        return len(ids)

    # ----------------------------------------------------------- context manager
    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
