"""open_transport: URL scheme registry and the public names of realtime_batch.transport."""

from __future__ import annotations

import pytest

import realtime_batch.transport as transport_pkg
from realtime_batch.transport import (
    TransportError,
    UnknownTransportError,
    open_transport,
    register_transport,
    transport_scheme,
)
from realtime_batch.transport.memory import MemoryTransport

CONTRACT_NAMES = {
    "open_transport",
    "Message",
    "Delivery",
    "Transport",
    "TransportError",
    "LockLostError",
    "MessageTooLargeError",
    "TransportClosedError",
    "ConnectionLostError",
    "dead_letter_queue",
}


def test_contract_names_are_exported():
    assert set(transport_pkg.__all__) >= CONTRACT_NAMES
    for name in transport_pkg.__all__:
        assert hasattr(transport_pkg, name), name


def test_unknown_scheme_names_the_known_ones():
    with pytest.raises(UnknownTransportError) as info:
        open_transport("carrier-pigeon://coop")
    assert isinstance(info.value, TransportError)
    for scheme in ("memory", "zmq", "servicebus"):
        assert scheme in str(info.value)


def test_not_a_url_is_rejected_clearly():
    with pytest.raises(UnknownTransportError, match="SCHEME://"):
        open_transport("just-a-name")


def test_connection_strings_map_to_servicebus():
    cs = "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s"
    assert transport_scheme(cs) == "servicebus"
    assert transport_scheme("ZMQ://127.0.0.1:5555") == "zmq"


def test_memory_transports_share_queues_by_name():
    url = "memory://shared-by-name"
    with open_transport(url) as a, open_transport(url) as b:
        assert isinstance(a, MemoryTransport)
        a.declare_queue("q")
        from realtime_batch.transport import Message

        a.send("q", Message(b"hi"))
        [d] = b.receive("q", timeout=1)
        b.complete(d)
    with open_transport("memory://other-name") as c, pytest.raises(TransportError):
        c.receive("q", timeout=0)


def test_register_transport_lazy_target(monkeypatch):
    monkeypatch.setitem(transport_pkg.TRANSPORTS, "mem2", "")
    register_transport("mem2", "realtime_batch.transport.memory:MemoryTransport")
    with open_transport("mem2://x") as t:
        assert isinstance(t, MemoryTransport)


def test_backend_with_missing_dependency_is_a_clear_error(monkeypatch):
    register_transport("broken", "realtime_batch.transport.no_such_module:Nope")
    try:
        with pytest.raises(UnknownTransportError, match="not available"):
            open_transport("broken://x")
    finally:
        transport_pkg.TRANSPORTS.pop("broken")
