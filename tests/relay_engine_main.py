"""Test-only: ``rtbatch engine`` whose zmq:// transport declares ``settles_by_token=False``.

The engine picks its feeder from the transport's capabilities (direct on ``zmq://``), and
no product option chooses it. Tests that must exercise the relay feeder against a real
broker run this file instead of ``python -m realtime_batch.engine``: the same command
line, with ``ZmqTransport`` saying another connection cannot settle its leases.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs

from realtime_batch.emulator.local_pool import LocalPool
from realtime_batch.engine.cli import engine
from realtime_batch.transport.zeromq.client import ZmqTransport

__all__ = ["RelayLocalPool", "pool", "relay_argv"]


def relay_argv(argv: list[str]) -> list[str]:
    """``[python, "-m", "realtime_batch.engine", ...]`` -> the same through this file."""
    assert argv[1:3] == ["-m", "realtime_batch.engine"], argv
    return [argv[0], __file__, *argv[3:]]


class RelayLocalPool(LocalPool):
    """A ``LocalPool`` whose engine processes relay every task (through this file)."""

    def _engine_argv(self, node: Any) -> list[str]:
        return relay_argv(super()._engine_argv(node))


def pool(mode: str, **kwargs: Any) -> LocalPool:
    """``LocalPool(**kwargs)`` whose engines feed their workers ``direct`` or ``relay``."""
    return (RelayLocalPool if mode == "relay" else LocalPool)(**kwargs)


def _without_settling_by_token() -> None:
    init = ZmqTransport.__init__

    @functools.wraps(init)
    def relayed_init(self: ZmqTransport, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.capabilities = attrs.evolve(self.capabilities, settles_by_token=False)

    ZmqTransport.__init__ = relayed_init  # type: ignore[method-assign]


if __name__ == "__main__":
    _without_settling_by_token()
    engine(prog_name="relay_engine_main.py")
