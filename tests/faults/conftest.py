"""Fixtures of the fault-injection suite: task files, backends, the figures report.

Set ``RTBATCH_FAULT_REPORT=path.json`` to have every scenario write its figures
(tasks run, engines killed, duplicates dropped, ...) into that file; the table in
``docs/reliability.md`` is made from it by ``tests/faults/fault_report.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from faultkit import REPORT_ENV, FaultReport


@pytest.fixture(scope="session")
def fault_report() -> Iterator[FaultReport]:
    report = FaultReport()
    yield report
    target = os.environ.get(REPORT_ENV)
    if target and report.scenarios:
        report.write(Path(target))


class Backend(NamedTuple):
    """A backend of the scenarios: its name and the transport URL to give ``LocalPool``."""

    name: str
    url: str


@pytest.fixture(
    scope="session", params=["zmq", pytest.param("servicebus", marks=pytest.mark.azure)]
)
def backend(request) -> Iterator[Backend]:
    """Each scenario runs on zmq (a broker per pool) and on the Service Bus stand-in.

    Session-scoped so that the stand-in process starts before a test's leak check.
    """
    if request.param == "zmq":
        yield Backend("zmq", "zmq://127.0.0.1:0")
        return
    pytest.importorskip("azure.servicebus")
    pytest.importorskip("proton")
    from servicebus_standin import StandInProcess

    standin = StandInProcess()
    try:
        yield Backend("servicebus", standin.connection_string)
    finally:
        standin.stop()
