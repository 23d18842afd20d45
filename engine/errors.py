"""Errors of the engine itself (a task's own failures travel as error results instead)."""

from __future__ import annotations

__all__ = ["CredentialError", "EngineError", "PipelineError", "WorkerStartError"]


class EngineError(RuntimeError):
    """The engine cannot run (e.g. its worker process does not start)."""


class WorkerStartError(EngineError):
    """The worker process did not come up."""


class PipelineError(EngineError):
    """The worker answered out of order (a broken pipe protocol)."""


class CredentialError(EngineError):
    """A credential cannot be used as given (a secret on the command line, a credential
    file others can read, a credential-like name passed to tasks)."""
