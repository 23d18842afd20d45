"""A ``Broker`` object run in a thread of the test process, for tests that look inside it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from realtime_batch.transport.zeromq.broker import Broker

__all__ = ["running", "url_of"]


@contextlib.contextmanager
def running(broker: Broker) -> Iterator[Broker]:
    """Serve ``broker`` in a daemon thread; stop, join and close it on the way out."""
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    try:
        yield broker
    finally:
        broker.stop()
        thread.join(5)
        broker.close()


def url_of(broker: Broker) -> str:
    """The ``zmq://`` URL of a broker bound to a TCP endpoint."""
    return "zmq://" + broker.endpoint.removeprefix("tcp://")
