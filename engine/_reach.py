"""When the transport fails: back off between retries, and stop once its service is gone.

``Backoff`` is the one wait between retries of a failing transport call (every
loop of the engine and its direct worker that receives from the transport).

A ZeroMQ broker is a process beside the pool: when it has answered nothing for its
transport's ``Capabilities.gone_after`` seconds, it is not coming back (a restart
is back within a second), and every lease the engine holds died with it. Retrying
would keep the engine, its worker and its give-backs alive for nothing, so the
engine says so in one log line and stops at once, without settling anything.
Backends without ``gone_after`` (a cloud service) are waited for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..transport.errors import ConnectionLostError, TransportError
from .errors import EngineError

__all__ = ["Backoff", "ServiceGoneError", "ServiceWatch"]

logger = logging.getLogger(__name__)


class Backoff:
    """Seconds to wait after each failure in a row: ``first``, doubling, at most ``cap``.

    tenacity's ``wait_exponential`` rule, for loops that must keep going on their own
    terms (a stop request, the service gone) rather than inside ``tenacity.Retrying``.
    tenacity is imported at the first failure, so that an engine and its worker start
    without it (#21).
    """

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self._first = first
        self._cap = cap
        self._wait: Any = None
        self._failures = 0  # in a row

    def succeeded(self) -> None:
        """The call worked: the next failure waits ``first`` again."""
        self._failures = 0

    def failed(self) -> float:
        """The call failed: how long to wait before the next one."""
        import tenacity

        if self._wait is None:
            self._wait = tenacity.wait_exponential(
                multiplier=self._first, min=self._first, max=self._cap
            )
        self._failures += 1
        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = self._failures
        return self._wait(state)


class ServiceGoneError(EngineError):
    """The transport's service did not answer for longer than its ``gone_after``."""


class ServiceWatch:
    """Counts how long every request to the service has failed; calls ``on_gone`` once.

    Gone: ``gone_after`` seconds since the last answer, and failures for half of it
    since the first one. A long idle receive is answered only every few seconds, so
    the last answer alone would make one failure after it look like a long silence.

    Args:
        gone_after: seconds without an answer after which the service is gone (None: never).
        on_gone: called once, with the ``ServiceGoneError`` that says why.
        what: how the log line names the engine.
    """

    def __init__(
        self, gone_after: float | None, on_gone: Callable[[ServiceGoneError], None], what: str
    ) -> None:
        self.gone_after = gone_after
        self.on_gone = on_gone
        self.what = what
        self.gone: ServiceGoneError | None = None
        self._answered = time.monotonic()
        self._first_failure: float | None = None
        self._lock = threading.Lock()

    def answered(self) -> None:
        """A request to the service succeeded."""
        self._answered = time.monotonic()
        self._first_failure = None

    def failed(self, exc: TransportError) -> bool:
        """A request failed with ``exc``; True if the service is gone (stop retrying)."""
        if self.gone is not None:
            return True
        if self.gone_after is None or not isinstance(exc, ConnectionLostError):
            return False
        now = time.monotonic()
        if self._first_failure is None:
            self._first_failure = now
        silent = now - self._answered
        if silent < self.gone_after or now - self._first_failure < self.gone_after / 2:
            return False
        with self._lock:
            if self.gone is not None:
                return True
            self.gone = ServiceGoneError(
                f"no answer from the transport for {silent:.0f} s ({exc}); it is gone, and the "
                "leases held with it: stopping"
            )
        logger.error("%s: %s", self.what, self.gone)
        self.on_gone(self.gone)
        return True
