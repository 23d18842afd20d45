"""Fixtures for the engine tests: an in-process harness over memory:// and a zmq broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import ROOT, TASKS, Broker, Harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    work = tmp_path / "wd"
    work.mkdir()
    h = Harness(TASKS, work)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def zmq_broker() -> Iterator[Broker]:
    if not (ROOT / "transport" / "zeromq" / "broker.py").exists():
        pytest.skip("the ZeroMQ broker is not available")
    broker = Broker()
    try:
        yield broker
    finally:
        broker.stop()
