"""Pins the public API of ``import realtime_batch as rb``."""

from __future__ import annotations

import subprocess
import sys

import realtime_batch as rb

PUBLIC = {
    "AzureBatchPool",
    "DependencyError",
    "JobManager",
    "LocalPool",
    "Message",
    "Pool",
    "Result",
    "Session",
    "TaskCancelledError",
    "TaskError",
    "__version__",
    "open_transport",
}


def test_public_names_are_exactly_these():
    assert set(rb.__all__) == PUBLIC


def test_core_names_resolve():
    for name in ("Session", "LocalPool", "JobManager", "Result", "TaskError"):
        assert getattr(rb, name).__name__ == name
    assert issubclass(rb.JobManager, rb.Session)


def test_unknown_attribute_is_an_attribute_error():
    try:
        rb.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_protocol_does_not_load_the_client_side():
    code = (
        "import sys, realtime_batch.protocol, realtime_batch.transport; "
        "print(any(m.startswith(('realtime_batch.orchestrator', 'realtime_batch.emulator')) "
        "for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
