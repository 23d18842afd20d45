"""Fixtures for the engine tests: an in-process harness over memory://, a zmq broker, and
(opt-in) the Service Bus stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import MODES, ROOT, TASKS, Broker, Harness, open_harness

SERVICEBUS_MODE = "servicebus_mode"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{SERVICEBUS_MODE}: run this test's ``harness`` on the Service Bus stand-in too",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``harness`` runs in relay and direct mode, and on the Service Bus stand-in for
    tests marked ``servicebus_mode`` (opt-in: it costs a stand-in per xdist worker)."""
    if "harness" not in metafunc.fixturenames:
        return
    modes = list(MODES)
    if metafunc.definition.get_closest_marker(SERVICEBUS_MODE) is not None:
        modes.append("servicebus")
    metafunc.parametrize("harness", modes, indirect=True)


@pytest.fixture
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Engines in relay mode over memory://, in direct mode over a zmq:// broker, or in
    relay mode over the Service Bus stand-in (``servicebus``)."""
    standin_url = None
    if request.param == "servicebus":
        standin_url = request.getfixturevalue("engine_standin").connection_string
    with open_harness(request.param, TASKS, tmp_path / "wd", standin_url=standin_url) as h:
        yield h


@pytest.fixture(scope="session")
def engine_standin():
    """One Service Bus stand-in per test process, started on first use (harnesses name
    their own queues). Skips where the SDK or proton is missing."""
    pytest.importorskip("azure.servicebus")
    pytest.importorskip("proton")
    from servicebus_standin import StandInProcess

    process = StandInProcess()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def zmq_broker() -> Iterator[Broker]:
    if not (ROOT / "transport" / "zeromq" / "broker.py").exists():
        pytest.skip("the ZeroMQ broker is not available")
    broker = Broker()
    try:
        yield broker
    finally:
        broker.stop()
