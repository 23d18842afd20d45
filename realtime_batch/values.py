"""What a task's arguments and result may be, and how they travel (MessagePack, tagged).

MessagePack carries ``None``, ``bool``, ``int`` (64-bit), ``float``, ``str``, ``bytes``,
lists and dicts natively; ``bytearray`` and ``memoryview`` travel as their bytes and
arrive as ``bytes``. The values below travel as MessagePack extension types (the tag is
the extension code), so they arrive as what was sent:

====  ===================  =====================================================
code  type                 carried as
====  ===================  =====================================================
1     ``tuple``            its items, packed
2     ``set``              its items, packed
3     ``frozenset``        its items, packed
4     ``datetime``         ISO 8601 text (naive stays naive; an offset is kept)
5     ``date``             ISO 8601 text
6     ``time``             ISO 8601 text
7     ``timedelta``        days, seconds, microseconds
8     ``decimal.Decimal``  its text
9     ``uuid.UUID``        its 16 bytes
16    payload reference    a content hash (``realtime_batch.payloads``)
====  ===================  =====================================================

Anything else (objects, subclasses such as ``OrderedDict`` or an ``Enum``, numpy
arrays, dict keys that are not ``str`` or ``int``) is refused with ``ProtocolError``
naming where it is (``args[0]['when']``), never silently changed into something else.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = [
    "EXT_REF",
    "PayloadRef",
    "UnsupportedValueError",
    "ext_hook",
    "pack",
    "prepare",
    "unpack",
]

EXT_TUPLE, EXT_SET, EXT_FROZENSET = 1, 2, 3
EXT_DATETIME, EXT_DATE, EXT_TIME, EXT_TIMEDELTA, EXT_DECIMAL, EXT_UUID = 4, 5, 6, 7, 8, 9
EXT_REF = 16

_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_encoder = msgspec.msgpack.Encoder()


class UnsupportedValueError(TypeError):
    """A value the protocol cannot carry exactly; ``where`` says where it sits."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.where = ""
        super().__init__(kind)

    def __str__(self) -> str:
        return f"{self.kind} at {self.where or 'the top'} cannot be carried exactly"


class PayloadRef:
    """A value kept in the job's payload store: its SHA-256 (hex) and packed size.

    Only ``realtime_batch.payloads`` makes and resolves these; a task never sees one.
    """

    __slots__ = ("digest", "size")

    def __init__(self, digest: str, size: int) -> None:
        self.digest = digest
        self.size = size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PayloadRef) and (other.digest, other.size) == (
            self.digest,
            self.size,
        )

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"PayloadRef({self.digest[:12]}..., {self.size} bytes)"


def _items(values: Any) -> bytes:
    return _encoder.encode([prepare(v) for v in values])


def _tag(value: Any) -> msgspec.msgpack.Ext:
    kind = type(value)
    if kind is tuple:
        return msgspec.msgpack.Ext(EXT_TUPLE, _items(value))
    if kind is set:
        return msgspec.msgpack.Ext(EXT_SET, _items(value))
    if kind is frozenset:
        return msgspec.msgpack.Ext(EXT_FROZENSET, _items(value))
    if kind is _dt.datetime:
        return msgspec.msgpack.Ext(EXT_DATETIME, value.isoformat().encode())
    if kind is _dt.date:
        return msgspec.msgpack.Ext(EXT_DATE, value.isoformat().encode())
    if kind is _dt.time:
        return msgspec.msgpack.Ext(EXT_TIME, value.isoformat().encode())
    if kind is _dt.timedelta:
        return msgspec.msgpack.Ext(
            EXT_TIMEDELTA, _encoder.encode([value.days, value.seconds, value.microseconds])
        )
    if kind is decimal.Decimal:
        return msgspec.msgpack.Ext(EXT_DECIMAL, str(value).encode())
    if kind is uuid.UUID:
        return msgspec.msgpack.Ext(EXT_UUID, value.bytes)
    if kind is PayloadRef:
        return msgspec.msgpack.Ext(EXT_REF, _encoder.encode([value.digest, value.size]))
    raise UnsupportedValueError(f"{kind.__module__}.{kind.__qualname__}")


def prepare(value: Any) -> Any:
    """``value`` ready for the MessagePack encoder: tagged where needed, checked everywhere.

    Returns ``value`` itself when nothing in it needs a tag (the usual case: no copy).

    Raises:
        UnsupportedValueError: something in ``value`` cannot be carried exactly.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        out = None
        for index, item in enumerate(value):
            try:
                new = prepare(item)
            except UnsupportedValueError as exc:
                exc.where = f"[{index}]{exc.where}"
                raise
            if new is not item:
                if out is None:
                    out = list(value)
                out[index] = new
        return value if out is None else out
    if kind is dict:
        out_dict = None
        for key, item in value.items():
            if type(key) not in (str, int):
                exc = UnsupportedValueError(f"a dict key of type {type(key).__name__}")
                exc.where = f"[{key!r}]"
                raise exc
            try:
                new = prepare(item)
            except UnsupportedValueError as exc:
                exc.where = f"[{key!r}]{exc.where}"
                raise
            if new is not item:
                if out_dict is None:
                    out_dict = dict(value)
                out_dict[key] = new
        return value if out_dict is None else out_dict
    if kind is bytearray or kind is memoryview:
        return value  # packed as bin, arrives as bytes (documented)
    return _tag(value)


def _ref(data: memoryview) -> PayloadRef:
    from .transport.payload_store import check_digest  # one rule for what a digest may be

    digest, size = _any.decode(data)
    if type(size) is not int or size < 0:
        raise ValueError("a payload reference's size must be a non-negative int")
    return PayloadRef(check_digest(digest), size)


_DECODERS: dict[int, Callable[[memoryview], Any]] = {
    EXT_TUPLE: lambda data: tuple(_any.decode(data)),
    EXT_SET: lambda data: set(_any.decode(data)),
    EXT_FROZENSET: lambda data: frozenset(_any.decode(data)),
    EXT_DATETIME: lambda data: _dt.datetime.fromisoformat(bytes(data).decode()),
    EXT_DATE: lambda data: _dt.date.fromisoformat(bytes(data).decode()),
    EXT_TIME: lambda data: _dt.time.fromisoformat(bytes(data).decode()),
    EXT_TIMEDELTA: lambda data: _dt.timedelta(*_any.decode(data)),
    EXT_DECIMAL: lambda data: decimal.Decimal(bytes(data).decode()),
    EXT_UUID: lambda data: uuid.UUID(bytes=bytes(data)),
    EXT_REF: _ref,
}


def ext_hook(code: int, data: memoryview) -> Any:
    """The decoder's hook for the tags above; an unknown tag is a ``ValueError``."""
    decode = _DECODERS.get(code)
    if decode is None:
        raise ValueError(f"unknown value tag {code}")
    try:
        return decode(data)
    except Exception as exc:  # whatever the bytes: a bad tag is one kind of error
        raise ValueError(f"bad value with tag {code}: {exc}") from None


_any = msgspec.msgpack.Decoder(ext_hook=ext_hook)


def pack(value: Any) -> bytes:
    """``value`` as MessagePack bytes (see the module's table).

    Raises:
        UnsupportedValueError: something in ``value`` cannot be carried exactly.
    """
    return _encoder.encode(prepare(value))


def unpack(data: bytes | memoryview) -> Any:
    """The value ``pack`` made; raises ``ValueError`` (or ``msgspec.DecodeError``) if invalid."""
    return _any.decode(data)
