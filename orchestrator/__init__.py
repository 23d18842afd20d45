"""Client sessions and the pool interface (Azure Batch and the emulator share it)."""

from __future__ import annotations

from .jobmanager import JobManager
from .pool import OrchestratorError, Pool, PoolNotFoundError, PoolStateError
from .session import (
    DependencyError,
    Result,
    Session,
    SessionClosedError,
    TaskCancelledError,
    TaskError,
)

__all__ = [
    "DependencyError",
    "JobManager",
    "OrchestratorError",
    "Pool",
    "PoolNotFoundError",
    "PoolStateError",
    "Result",
    "Session",
    "SessionClosedError",
    "TaskCancelledError",
    "TaskError",
]
