"""Errors of the engine itself (a task's own failures travel as error results instead)."""

from __future__ import annotations

__all__ = ["EngineError", "PipelineError", "WorkerStartError"]


class EngineError(RuntimeError):
    """The engine cannot run (e.g. its worker process does not start)."""


class WorkerStartError(EngineError):
    """The worker process did not come up."""


class PipelineError(EngineError):
    """The worker answered out of order (a broken pipe protocol)."""
