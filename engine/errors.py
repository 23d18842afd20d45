"""Errors of the engine itself (a task's own failures travel as error results instead)."""

from __future__ import annotations

__all__ = [
    "WORKER_MODE_REMOVED",
    "CredentialError",
    "EngineError",
    "PipelineError",
    "WorkerStartError",
]

#: Why ``rtbatch engine --worker-mode`` and ``LocalPool(worker_mode=...)`` are refused (#17).
WORKER_MODE_REMOVED = (
    "the worker mode option was removed: an engine feeds its task worker directly when the "
    "transport lets another connection settle its leases (zmq://) and through the engine "
    "otherwise; relaying on zmq:// measured no faster, so there is nothing to choose "
    "(docs/engine.md). Drop the option"
)


class EngineError(RuntimeError):
    """The engine cannot run (e.g. its worker process does not start)."""


class WorkerStartError(EngineError):
    """The worker process did not come up."""


class PipelineError(EngineError):
    """The worker answered out of order (a broken pipe protocol)."""


class CredentialError(EngineError):
    """A credential cannot be used as given (a secret on the command line, a credential
    file others can read, a credential-like name passed to tasks)."""
