"""Task values travel exactly or are refused at submit: never silently changed (#20)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections import OrderedDict

import pytest

from realtime_batch.protocol import (
    ProtocolError,
    ReplyTo,
    ResultRecord,
    TaskRecord,
    decode_result,
    decode_task,
    encode_result,
    encode_task,
)


def _task(*args, **kwargs) -> TaskRecord:
    return TaskRecord(
        session="s1", job="j1", task="t1", command="echo.py", reply_to=ReplyTo("r", "s1"),
        args=list(args), kwargs=kwargs,
    )  # fmt: skip


def _round_trip(value):
    task = decode_task(encode_task(_task(value, key=value)))
    result = ResultRecord(session="s", job="j", task="t", status="ok", value=value)
    return task.args[0], task.kwargs["key"], decode_result(encode_result(result)).value


EXACT = [
    dt.datetime(2026, 12, 2, 15, 9, 51, 123456),
    dt.datetime(2026, 12, 2, 15, 9, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.date(2026, 12, 2),
    dt.time(15, 9, 51, 7),
    dt.timedelta(days=-1, seconds=5, microseconds=3),
    (1, "two", (3.0, None)),
    {1, 2, 3},
    frozenset({"a", "b"}),
    decimal.Decimal("3.14159265358979323846"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00\xffbinary",
    {"nested": [(1, 2), {dt.date(2020, 1, 1)}], 7: "int key"},
    [1, 2.5, True, None, "text"],
]


@pytest.mark.parametrize("value", EXACT, ids=lambda v: type(v).__name__)
def test_values_arrive_as_sent_with_their_type(value):
    for got in _round_trip(value):
        assert got == value
        assert type(got) is type(value)


def test_a_datetime_is_not_silently_a_string():
    when = dt.datetime(2026, 12, 2, 15, 9, 51)
    arg, kwarg, result = _round_trip(when)
    assert isinstance(arg, dt.datetime) and isinstance(kwarg, dt.datetime)
    assert isinstance(result, dt.datetime)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_bytearray_and_memoryview_arrive_as_bytes(kind):
    for got in _round_trip(kind(b"abc\x00")):
        assert got == b"abc\x00" and type(got) is bytes


def test_bytes_travel_without_base64_growth():
    blob = bytes(range(256)) * 400  # 100 KiB
    body = encode_task(_task(blob))
    assert len(body) < len(blob) + 400  # base64 would add a third


class _Thing:
    pass


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (_Thing(), "_Thing at the top"),
        ([1, {"when": OrderedDict(a=1)}], "OrderedDict at [1]['when']"),
        ({(1, 2): "tuple key"}, "dict key of type tuple"),
        ([complex(1, 2)], "complex at [0]"),
        ([2**70], "can't serialize ints"),
    ],
)
def test_values_that_cannot_travel_exactly_are_refused_naming_where(value, where):
    with pytest.raises(ProtocolError, match="args") as info:
        encode_task(_task(value))
    assert where.split(" at ")[0] in str(info.value)
    with pytest.raises(ProtocolError, match="value"):
        encode_result(ResultRecord(session="s", job="j", task="t", status="ok", value=value))
