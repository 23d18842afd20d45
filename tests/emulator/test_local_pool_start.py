"""LocalPool refuses what cannot work before it starts anything, in one clear error."""

from __future__ import annotations

import socket

import pytest

import realtime_batch as rb
from realtime_batch.orchestrator import OrchestratorError
from realtime_batch.transport import UnknownTransportError


def test_unknown_transport_scheme_is_refused_before_any_process(tmp_path, no_leaked_processes):
    with pytest.raises(UnknownTransportError, match="unknown transport scheme 'foo'"):
        rb.LocalPool(engines=1, transport="foo://x", root=tmp_path / "pool")
    assert not (tmp_path / "pool").exists()


def test_broker_port_in_use_says_so_and_suggests_start_broker_false(tmp_path, no_leaked_processes):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OrchestratorError) as info:
            rb.LocalPool(engines=1, transport=f"zmq://127.0.0.1:{port}")
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "in use" in message
    assert "start_broker=False" in message
