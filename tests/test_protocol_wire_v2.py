"""Protocol v2's bytes are pinned: bodies made before the records became msgspec structs
(frozen here as bytes, produced by the attrs records and the hand-built dicts) decode to
the same records, and today's encoders produce exactly those bytes."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from realtime_batch.protocol import (
    ErrorInfo,
    ProtocolError,
    ReplyTo,
    ResultRecord,
    TaskRecord,
    decode_result,
    decode_task,
    encode_result,
    encode_task,
    replace,
)

FULL_TASK = TaskRecord(
    session="s1",
    job="j1",
    task="t1",
    command="hello.py",
    reply_to=ReplyTo("results", "s1"),
    args=[1, "two", b"\x00\xff", (1, 2.5)],
    kwargs={"when": dt.datetime(2026, 1, 2, 3, 4, 5), "n": None},
    attempt=2,
    max_retries=5,
    timeout=2.5,
    deadline=1e10,
    retry_on=["ValueError"],
    submitted_at=1700000000.25,
    session_key="k1",
)
FULL_TASK_BODY = (
    b"\x8f\xa1v\x02\xa7session\xa2s1\xa3job\xa2j1\xa4task\xa2t1\xa7command\xa8hello.py"
    b"\xa8reply_to\x82\xa5queue\xa7results\xa5group\xa2s1\xa4args\x94\x01\xa3two\xc4\x02"
    b"\x00\xff\xc7\x0b\x01\x92\x01\xcb@\x04\x00\x00\x00\x00\x00\x00\xa6kwargs\x82\xa4when"
    b"\xc7\x13\x042026-01-02T03:04:05\xa1n\xc0\xa7attempt\x02\xabmax_retries\x05\xa7timeout"
    b"\xcb@\x04\x00\x00\x00\x00\x00\x00\xa8deadline\xcbB\x02\xa0_ \x00\x00\x00\xa8retry_on"
    b"\x91\xaaValueError\xacsubmitted_at\xcbA\xd9T\xfc@\x10\x00\x00\xabsession_key\xa2k1"
)
PLAIN_TASK = TaskRecord(
    session="s", job="j", task="t", command="x.py", reply_to=ReplyTo("q"), submitted_at=1.5
)
PLAIN_TASK_BODY = (
    b"\x8f\xa1v\x02\xa7session\xa1s\xa3job\xa1j\xa4task\xa1t\xa7command\xa4x.py\xa8reply_to"
    b"\x82\xa5queue\xa1q\xa5group\xc0\xa4args\x90\xa6kwargs\x80\xa7attempt\x01\xabmax_retries"
    b"\x03\xa7timeout\xc0\xa8deadline\xc0\xa8retry_on\x90\xacsubmitted_at"
    b"\xcb?\xf8\x00\x00\x00\x00\x00\x00\xabsession_key\xa0"
)
ERROR_RESULT = ResultRecord(
    session="s1",
    job="j1",
    task="t1",
    status="error",
    error=ErrorInfo("ValueError", "bad", "Traceback..."),
    engine="n-1",
    attempt=2,
    started_at=1.0,
    finished_at=2.0,
    session_key="k1",
)
ERROR_RESULT_BODY = (
    b"\x8d\xa1v\x02\xa7session\xa2s1\xa3job\xa2j1\xa4task\xa2t1\xa6status\xa5error\xa2ok\xc2"
    b"\xa5value\xc0\xa5error\x83\xa4type\xaaValueError\xa7message\xa3bad\xa9traceback"
    b"\xacTraceback...\xa6engine\xa3n-1\xa7attempt\x02\xaastarted_at"
    b"\xcb?\xf0\x00\x00\x00\x00\x00\x00\xabfinished_at\xcb@\x00\x00\x00\x00\x00\x00\x00"
    b"\xabsession_key\xa2k1"
)
VALUE_RESULT = ResultRecord(
    session="s1",
    job="j1",
    task="t2",
    status="ok",
    value={"x": [1, {2, 3}], "b": b"abc"},
    engine="e",
)
VALUE_RESULT_BODY = (
    b"\x8d\xa1v\x02\xa7session\xa2s1\xa3job\xa2j1\xa4task\xa2t2\xa6status\xa2ok\xa2ok\xc3"
    b"\xa5value\x82\xa1x\x92\x01\xc7\x03\x02\x92\x02\x03\xa1b\xc4\x03abc\xa5error\xc0\xa6engine"
    b"\xa1e\xa7attempt\x01\xaastarted_at\xc0\xabfinished_at\xc0\xabsession_key\xa0"
)

TASKS = [(FULL_TASK, FULL_TASK_BODY), (PLAIN_TASK, PLAIN_TASK_BODY)]
RESULTS = [(ERROR_RESULT, ERROR_RESULT_BODY), (VALUE_RESULT, VALUE_RESULT_BODY)]


@pytest.mark.parametrize(("record", "body"), TASKS)
def test_task_bodies_are_byte_identical_to_protocol_v2_before(record, body):
    assert encode_task(record) == body
    decoded = decode_task(body)
    assert decoded == record
    assert type(decoded) is TaskRecord and type(decoded.reply_to) is ReplyTo


@pytest.mark.parametrize(("record", "body"), RESULTS)
def test_result_bodies_are_byte_identical_to_protocol_v2_before(record, body):
    assert encode_result(record) == body
    decoded = decode_result(body)
    assert decoded == record
    assert decoded.error is None or type(decoded.error) is ErrorInfo


def test_a_body_without_v_is_refused_naming_v():
    for record, encode, decode in (
        (PLAIN_TASK, encode_task, decode_task),
        (ERROR_RESULT, encode_result, decode_result),
    ):
        data = msgspec.msgpack.decode(encode(record))
        del data["v"]
        with pytest.raises(ProtocolError, match="missing required field `v`") as info:
            decode(msgspec.msgpack.encode(data))
        assert info.value.field == "v"


def test_v_need_not_come_first():
    data = msgspec.msgpack.decode(PLAIN_TASK_BODY)
    moved = {**{k: v for k, v in data.items() if k != "v"}, "v": 2}
    assert decode_task(msgspec.msgpack.encode(moved)) == PLAIN_TASK
    moved["v"] = 3
    with pytest.raises(ProtocolError, match="unsupported protocol version 3"):
        decode_task(msgspec.msgpack.encode(moved))


def test_replace_derives_a_changed_copy_of_a_frozen_record():
    changed = replace(PLAIN_TASK, args=[7], attempt=3)
    assert (changed.args, changed.attempt, changed.command) == ([7], 3, "x.py")
    assert PLAIN_TASK.args == [] and PLAIN_TASK.attempt == 1
    with pytest.raises(AttributeError):
        PLAIN_TASK.attempt = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        replace(PLAIN_TASK, no_such_field=1)


def test_defaults_are_fresh_per_record():
    one = TaskRecord(session="s", job="j", task="a", command="x", reply_to=ReplyTo("q"))
    two = TaskRecord(session="s", job="j", task="b", command="x", reply_to=ReplyTo("q"))
    one.args.append(1)
    assert two.args == [] and one.submitted_at > 0
