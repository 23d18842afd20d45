"""The interface every benchmarked system implements.

A system starts two workers on loopback, runs the benchmark tasks by name
(``noop``, ``sleep``, ``echo``, ``block``; see ``benchmarks/tasks/``) and stops
everything it started. Workloads (``benchmarks.workloads``) are written once
against this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

__all__ = ["NotApplicableError", "System", "SystemUnavailableError"]

#: workers every system runs
WORKERS = 2


class SystemUnavailableError(RuntimeError):
    """The system cannot run here (a missing backend or dependency); the reason says why."""


class NotApplicableError(RuntimeError):
    """A workload does not apply to a system (e.g. a payload above its message limit)."""


class System(ABC):
    """A task system under test: two workers plus whatever broker or scheduler it needs."""

    #: the record's ``system`` name
    name: str = ""
    #: what runs where, one line for the report
    description: str = ""
    #: factor applied to the workloads' task counts (for a system too slow for full counts)
    scale: float = 1.0
    #: why the counts are scaled (goes into the records' notes)
    scale_reason: str = ""

    @abstractmethod
    def start(self) -> None:
        """Start the workers (and broker/scheduler); return when tasks can be submitted."""

    @abstractmethod
    def call(self, task: str, *args: Any) -> Any:
        """Run one task and return its value (a blocking round trip)."""

    @abstractmethod
    def run_all(self, task: str, args_list: list[tuple[Any, ...]]) -> None:
        """Submit one task per argument tuple at once, then wait for every result."""

    @abstractmethod
    def submit_outstanding(self, task: str, count: int) -> None:
        """Submit ``count`` tasks and return without waiting for them (client-memory)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop everything :meth:`start` started. Idempotent."""

    def run_workflow(self, fan_out: int) -> Any:
        """Run ``echo(i)`` for ``i < fan_out``, then one ``total`` task over their values.

        The reduce task is handed to the system at once, before the fan-out is done,
        with the fan-out's futures (or references) as its input: the system itself holds
        it until its inputs are ready. Returns the reduce task's value.

        Raises:
            NotApplicableError: the system has no way to pass one task's result to
                another (the default).
        """
        raise NotApplicableError(f"{self.name} has no task graph (workflow)")

    def call_jar(self, jar: str, *args: Any) -> Any:
        """Run a staged benchmark jar (``noop.jar``) as one task and return its value.

        Raises:
            NotApplicableError: the system runs no jars (the default), or no JDK is present.
        """
        raise NotApplicableError(f"{self.name} runs no Java tasks")

    def versions(self) -> dict[str, str]:
        """Versions of the packages and servers this system uses."""
        return {}

    def __enter__(self) -> System:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
