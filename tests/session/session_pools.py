"""A LocalPool with real engines on each backend, for the end-to-end session tests."""

from __future__ import annotations

import contextlib
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import relay_engine_main

import realtime_batch as rb

__all__ = ["BACKENDS", "backend_pool", "store_files", "write_tasks"]

#: the backends an end-to-end test runs on (Service Bus through the stand-in: azure marker)
BACKENDS = ["memory", "zmq", pytest.param("servicebus", marks=pytest.mark.azure)]


@contextlib.contextmanager
def backend_pool(backend: str, task_files: list[Path], engines: int) -> Iterator[rb.LocalPool]:
    """A pool of ``engines`` on ``backend``; fails if it leaves processes behind.

    ``backend``: ``memory``, ``zmq`` (engines feed their workers directly), ``zmq-relay``
    (the same engines relaying, through tests/relay_engine_main.py) or ``servicebus`` (the
    stand-in).
    """
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    standin = None
    if backend == "memory":
        url = f"memory://e2e-{uuid.uuid4().hex}"
    elif backend in ("zmq", "zmq-relay"):
        url = "zmq://127.0.0.1:0"
    else:
        pytest.importorskip("azure.servicebus")
        from servicebus_standin import StandInProcess

        standin = StandInProcess()
        url = standin.connection_string
    try:
        mode = "relay" if backend == "zmq-relay" else "direct"
        with relay_engine_main.pool(
            mode, engines=engines, transport=url, task_files=task_files
        ) as local_pool:
            yield local_pool
    finally:
        if standin is not None:
            standin.stop()
    leftover = [c for c in me.children(recursive=True) if c.pid not in before]
    _, alive = psutil.wait_procs(leftover, timeout=5)
    for proc in alive:
        proc.kill()
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"


def store_files(pool: rb.LocalPool) -> list:
    """What the pool's job has in its payload store: files, or (job, space, digest) names
    in the in-process store of memory://."""
    from realtime_batch.payloads import MemoryStore

    store = pool.payload_store
    if isinstance(store, MemoryStore):
        return [name for name in store.names() if name[0] == pool.job]
    if not store.root.exists():
        return []
    return [p for p in store.root.rglob("*") if p.is_file()]


def write_tasks(folder: Path, sources: dict[str, str]) -> list[Path]:
    """Write each ``name: source`` task module (dedented) into ``folder``; their paths."""
    paths = []
    for name, source in sources.items():
        path = folder / name
        path.write_text(textwrap.dedent(source).lstrip())
        paths.append(path)
    return paths
