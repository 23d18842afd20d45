"""Fixtures for the engine tests: an in-process harness over memory:// and a zmq broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import ROOT, TASKS, Broker, Harness, open_harness


@pytest.fixture(params=["relay", "direct"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Engines in relay mode over memory://, or in direct mode over a zmq:// broker."""
    with open_harness(request.param, TASKS, tmp_path / "wd") as h:
        yield h


@pytest.fixture
def zmq_broker() -> Iterator[Broker]:
    if not (ROOT / "transport" / "zeromq" / "broker.py").exists():
        pytest.skip("the ZeroMQ broker is not available")
    broker = Broker()
    try:
        yield broker
    finally:
        broker.stop()
