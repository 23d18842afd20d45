"""``_children.end_child``: the one way the project stops and reaps a child process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from realtime_batch.engine._children import end_child

_IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for whoever reaps it counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_child_that_ends_when_asked_is_not_killed():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert end_child(proc, ask=signal.SIGTERM, grace=30) == -signal.SIGTERM


def test_a_child_that_ignores_the_request_is_killed_after_its_grace():
    proc = subprocess.Popen([sys.executable, "-c", _IGNORES_TERM], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.stdout.close()
    assert end_child(proc, ask=signal.SIGTERM, grace=0.2) == -signal.SIGKILL


def test_no_signal_and_no_grace_kills_at_once():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert end_child(proc) == -signal.SIGKILL
    assert end_child(proc) == -signal.SIGKILL  # reaped already: its status again


def test_a_group_leader_takes_its_group_with_it_even_when_it_ended_first():
    # the leader starts a member of its group, prints its pid and exits
    code = (
        "import subprocess, sys; "
        f"p = subprocess.Popen([sys.executable, '-c', {_IGNORES_TERM!r}], stdout=subprocess.PIPE); "
        "p.stdout.readline(); print(p.pid)"
    )
    leader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              start_new_session=True)  # fmt: skip
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    leader.stdout.close()
    leader.wait(30)
    assert _alive(member)
    assert end_child(leader, ask=signal.SIGTERM, grace=0.1, group=True) == 0
    # the member was killed (it is not our child: init reaps it)
    end = time.monotonic() + 30
    while _alive(member) and time.monotonic() < end:
        time.sleep(0.01)
    assert not _alive(member)
