"""Fixtures for the engine tests: an in-process harness over memory:// and a zmq broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import ROOT, TASKS, Broker, Harness


@pytest.fixture(params=["relay", "direct"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Engines in relay mode over memory://, or in direct mode over a zmq:// broker."""
    work = tmp_path / "wd"
    work.mkdir()
    broker = Broker() if request.param == "direct" else None
    try:
        h = Harness(TASKS, work, None if broker is None else broker.url)
        try:
            yield h
        finally:
            h.close()
    finally:
        if broker is not None:
            broker.stop()


@pytest.fixture
def zmq_broker() -> Iterator[Broker]:
    if not (ROOT / "transport" / "zeromq" / "broker.py").exists():
        pytest.skip("the ZeroMQ broker is not available")
    broker = Broker()
    try:
        yield broker
    finally:
        broker.stop()
