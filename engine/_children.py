"""Child processes of the engine and the pool: how they die, one way each.

``end_child`` stops and reaps one (the engine's task worker, a worker's JVM host or
cold jar run, a pool's broker and engines): ask it to end, give it a grace period,
kill it (and its process group when it leads one), reap it within a timeout.

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
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["PARENT_DEATH_SIGNAL", "die_with_parent", "die_with_parent_preexec", "end_child"]

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


def end_child(
    proc: subprocess.Popen[Any],
    *,
    ask: int | None = None,
    grace: float = 0.0,
    group: bool = False,
    reap: float | None = 10.0,
) -> int | None:
    """Stop ``proc`` and reap it; return its exit status.

    Args:
        ask: a signal asking it to end, sent first (None: none now: it was asked
            another way, e.g. its input closed, or is killed at once).
        grace: seconds it has to end by itself before ``SIGKILL``.
        group: it leads a process group (``start_new_session``/``process_group=0``):
            ``ask`` and ``SIGKILL`` go to the whole group (e.g. a worker and its JVM),
            and what is left in the group is killed even when the leader has ended.
        reap: seconds to wait for the killed process (then killed again and waited
            for; None: wait as long as it takes).
    """

    def send(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)

    if proc.poll() is None:
        if ask is not None:
            send(ask)
        if grace > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
    if proc.poll() is None or group:
        send(signal.SIGKILL)
    try:
        return proc.wait(reap)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
