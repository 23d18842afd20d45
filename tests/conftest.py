"""Shared fixtures: process-leak guard and helpers used across the suite."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers importable


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (racy by nature; good enough for tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_leaked_processes():
    """Fail the test if it leaves processes behind.

    Processes started by processes that were already running (e.g. a worker restarted
    by an engine of a module-scoped pool) belong to those and are not counted.
    """
    me = psutil.Process(os.getpid())
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leftover = []
    for proc in me.children(recursive=True):
        try:
            if proc.pid in before or any(p.pid in before for p in proc.parents()):
                continue
        except psutil.NoSuchProcess:
            continue
        try:
            proc.wait(timeout=5)
        except psutil.TimeoutExpired:
            leftover.append(proc)
        except psutil.NoSuchProcess:
            pass
    for proc in leftover:
        proc.kill()
    assert not leftover, f"processes left behind: {[p.pid for p in leftover]}"
