"""Child processes of the engine and the pool: they die with their parent, one way.

Every process the project starts (a pool's broker and engines, an engine's task
worker, a worker's JVM) asks the kernel, between fork and exec, to send it
``SIGTERM`` when its parent dies (``PR_SET_PDEATHSIG``, Linux only), so nothing
outlives the process that owns it. ``SIGTERM`` is the one choice: an engine that
receives it drains and gives its tasks back; a worker or a JVM has no handler for
it and ends at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import threading
from collections.abc import Callable

__all__ = ["PARENT_DEATH_SIGNAL", "die_with_parent", "die_with_parent_preexec"]

PARENT_DEATH_SIGNAL = signal.SIGTERM
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Get ``PARENT_DEATH_SIGNAL`` when the parent dies (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL)


def die_with_parent_preexec() -> Callable[[], None] | None:
    """``die_with_parent`` as a ``preexec_fn``, where that is safe (Linux, one thread).

    ``preexec_fn`` runs between fork and exec, which is safe only while the parent
    has a single thread; otherwise None (the child then calls ``die_with_parent``
    itself if it can).
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return die_with_parent
    return None
