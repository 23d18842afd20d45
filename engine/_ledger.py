"""What a direct worker and its engine share: the ledger.

A direct worker (``_direct_runner``) takes tasks from the broker itself; what its
engine (``_direct``) needs in order to supervise it without being woken for every
task is here: the lease tokens it holds, and which task is running, since when,
until when, and its message. The worker writes, the engine reads (the other way
goes the control pipe, ``_pipe``).
"""

from __future__ import annotations

import mmap
import os
import struct
import time

from ..control import NOTIFY
from ..transport import Delivery
from ._observe import KEEP_SIZE

__all__ = ["FLAG_NOTIFY", "FLAG_RETRIED", "Ledger", "LedgerView"]

_HEADER = struct.Struct("<QqQddQIH")  # gen, running slot, run seq, started, deadline,
#                                        finished, body length, running attempt
_HEADER_SIZE = 64
_GEN = struct.Struct("<Q")
_SLOT = struct.Struct("<BBIddH")  # state, flags, delivery count, received, locked until,
#                                     token length (wall-clock times)
_SLOT_SIZE = 192
_TOKEN_MAX = _SLOT_SIZE - _SLOT.size
FLAG_NOTIFY = 1  # the slot's task asks for notices
FLAG_RETRIED = 2  # an attempt of the slot's delivery failed here; a retry backs off


class LedgerView:
    """A consistent copy of the ledger (see ``Ledger.snapshot``)."""

    __slots__ = ("attempt", "body", "deadline", "finished", "held", "run_seq", "running",
                 "started")  # fmt: skip

    def __init__(self) -> None:
        self.running = -1
        self.run_seq = 0
        self.started = 0.0
        self.deadline = 0.0
        self.finished = 0
        self.attempt = 0
        self.body = b""
        #: slot -> (token, delivery count, flags, received, locked until)
        self.held: dict[int, tuple[str, int, int, float, float]] = {}


class Ledger:
    """Shared memory that a direct worker writes and its engine reads.

    A header (running slot, run sequence, start and deadline on the monotonic clock,
    tasks finished, the running task's attempt and message length), ``slots`` slots
    of held deliveries, the running task's message body, then the worker's
    ``figures`` (``_observe``), which ``reset`` leaves for the next worker. The
    worker writes the header and body under a sequence counter (odd while writing),
    so the engine's reads of them are consistent; a slot's first byte, written last
    when it is filled and first when it is freed, says whether it holds a delivery.
    After the worker died the engine reads whatever is there.

    Args:
        slots: deliveries held at once at most (the prefetch).
        body_size: the largest message body.
        fd: an existing ledger's file descriptor (the worker's side); None creates one.
    """

    def __init__(self, slots: int, body_size: int, fd: int | None = None) -> None:
        self.slots = slots
        self.body_offset = _HEADER_SIZE + slots * _SLOT_SIZE
        self.figures_offset = self.body_offset + body_size
        self.size = self.figures_offset + KEEP_SIZE
        self.owner = fd is None
        if fd is None:
            fd = os.memfd_create("rtbatch-ledger")
            os.ftruncate(fd, self.size)
        self.fd = fd
        self.mem = mmap.mmap(fd, self.size)
        #: the worker's ``TaskObserver`` figures, kept from one worker to the next
        self.figures = memoryview(self.mem)[self.figures_offset :]
        if self.owner:
            self.reset()
        self._free = list(range(slots - 1, -1, -1))
        self._gen = 0
        self._run_seq = 0
        self._finished = 0

    def close(self) -> None:
        self.figures.release()
        self.mem.close()
        os.close(self.fd)

    # -- the worker's side ------------------------------------------------------------------
    def _begin(self) -> None:
        self._gen += 1
        _GEN.pack_into(self.mem, 0, self._gen)

    _end = _begin

    def room(self) -> int:
        """Slots free."""
        return len(self._free)

    def hold(self, deliveries: list[Delivery]) -> list[int]:
        """Record deliveries just received; return their slots."""
        slots = []
        for delivery in deliveries:  # the state byte, written last, makes a slot visible
            token = delivery.lock_token.encode()
            if len(token) > _TOKEN_MAX:
                raise ValueError(f"lock token of {len(token)} bytes: too long for the ledger")
            slot = self._free.pop()
            offset = _HEADER_SIZE + slot * _SLOT_SIZE
            flags = FLAG_NOTIFY if delivery.message.properties.get(NOTIFY) else 0
            self.mem[offset + _SLOT.size : offset + _SLOT.size + len(token)] = token
            _SLOT.pack_into(self.mem, offset, 0, flags, delivery.delivery_count, time.time(),
                            delivery.locked_until, len(token))  # fmt: skip
            self.mem[offset] = 1  # held: written last
            slots.append(slot)
        return slots

    def retried(self, slot: int) -> None:
        """An attempt of the delivery in ``slot`` failed and is retried here (one byte)."""
        offset = _HEADER_SIZE + slot * _SLOT_SIZE + 1
        self.mem[offset] = self.mem[offset] | FLAG_RETRIED

    def release(self, slots: list[int]) -> None:
        """The deliveries in ``slots`` are settled."""
        for slot in slots:
            self.mem[_HEADER_SIZE + slot * _SLOT_SIZE] = 0  # one byte: no torn state
            self._free.append(slot)

    def start(self, slot: int, body: bytes, deadline: float, attempt: int) -> None:
        """The task in ``slot`` starts (``deadline``: monotonic, 0 for none).

        A body larger than the ledger's room (a broker allowing larger messages than
        this engine's transport) is left out: the engine then cannot name the task,
        and gives it back counted if the worker dies running it.
        """
        self._run_seq += 1
        if len(body) > self.figures_offset - self.body_offset:
            body = b""
        self._begin()
        self.mem[self.body_offset : self.body_offset + len(body)] = body
        _HEADER.pack_into(self.mem, 0, self._gen, slot, self._run_seq, time.monotonic(),
                          deadline, self._finished, len(body), attempt)  # fmt: skip
        self._end()

    def stop(self) -> None:
        """The running task ended."""
        self._finished += 1
        self._begin()
        struct.pack_into("<qQddQ", self.mem, 8, -1, self._run_seq, 0.0, 0.0, self._finished)
        self._end()

    # -- the engine's side -------------------------------------------------------------------
    def snapshot(self, *, body: bool = False, force: bool = False) -> LedgerView:
        """A consistent view (``force``: as it is, for a dead worker's ledger)."""
        mem = self.mem
        while True:
            gen = struct.unpack_from("<Q", mem, 0)[0]
            if gen & 1 and not force:
                time.sleep(0)
                continue
            view = LedgerView()
            (_, view.running, view.run_seq, view.started, view.deadline, view.finished, length,
             view.attempt) = _HEADER.unpack_from(mem, 0)  # fmt: skip
            for slot in range(self.slots):
                offset = _HEADER_SIZE + slot * _SLOT_SIZE
                if mem[offset] != 1:
                    continue
                _state, flags, count, received, locked_until, size = _SLOT.unpack_from(mem, offset)
                token = bytes(mem[offset + _SLOT.size : offset + _SLOT.size + size]).decode(
                    errors="replace"
                )
                view.held[slot] = (token, count, flags, received, locked_until)
            if body and view.running >= 0:
                view.body = bytes(mem[self.body_offset : self.body_offset + length])
            if force or struct.unpack_from("<Q", mem, 0)[0] == gen:
                return view

    def reset(self) -> None:
        """Clear it for a new worker."""
        self.mem[: self.body_offset] = bytes(self.body_offset)
        struct.pack_into("<q", self.mem, 8, -1)
