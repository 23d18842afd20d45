"""Wire protocol: round trips and validation errors that name the field."""

from __future__ import annotations

import msgspec
import orjson
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
    peek_reply_to,
)


def make_task(**overrides) -> TaskRecord:
    fields = dict(
        session="s1",
        job="j1",
        task="t1",
        command="hello.py",
        reply_to=ReplyTo("results", "s1"),
        args=[1, "two"],
        kwargs={"k": 3},
    )
    fields.update(overrides)
    return TaskRecord(**fields)


def test_task_round_trip():
    task = make_task(timeout=2.5, deadline=123.0, retry_on=["ValueError"])
    assert decode_task(encode_task(task)) == task


def test_result_round_trip_and_ok_flag():
    result = ResultRecord(
        session="s1",
        job="j1",
        task="t1",
        status="error",
        error=ErrorInfo("ValueError", "bad", "Traceback..."),
        engine="n-1",
        attempt=2,
        started_at=1.0,
        finished_at=2.0,
    )
    body = encode_result(result)
    assert msgspec.msgpack.decode(body)["ok"] is False
    assert decode_result(body) == result
    assert ResultRecord(session="s", job="j", task="t", status="ok", value=[1]).ok


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("command"), "command"),
        (lambda d: d.update(command=5), "command"),
        (lambda d: d.update(args="notalist"), "args"),
        (lambda d: d.update(reply_to={"group": "x"}), "queue"),
        (lambda d: d.update(attempt=True), "attempt"),
        (lambda d: d.update(timeout=-1), "timeout"),
        (lambda d: d.update(v=99), "v"),
        (lambda d: d.update(command=""), "command"),
    ],
)
def test_task_validation_names_the_field(mutate, field):
    data = msgspec.msgpack.decode(encode_task(make_task()))
    mutate(data)
    with pytest.raises(ProtocolError) as info:
        decode_task(msgspec.msgpack.encode(data))
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize("body", [b"", b"\xff\xfe", b"[1,2]", b"null", b"{", b'"str"'])
def test_garbage_is_a_protocol_error(body):
    with pytest.raises(ProtocolError):
        decode_task(body)
    with pytest.raises(ProtocolError):
        decode_result(body)


def test_result_unknown_status_rejected():
    data = msgspec.msgpack.decode(
        encode_result(ResultRecord(session="s", job="j", task="t", status="ok"))
    )
    data["status"] = "maybe"
    with pytest.raises(ProtocolError, match="status"):
        decode_result(msgspec.msgpack.encode(data))


def test_unencodable_args_raise_protocol_error():
    with pytest.raises(ProtocolError):
        encode_task(make_task(args=[object()]))


def test_peek_reply_to_finds_sender_of_invalid_task():
    data = msgspec.msgpack.decode(encode_task(make_task(session_key="k1")))
    data["v"] = 42
    found = peek_reply_to(msgspec.msgpack.encode(data))
    assert found is not None
    reply, ids = found
    assert reply == ReplyTo("results", "s1")
    # the session key too: the error result must carry it for the session to accept it
    assert ids == {"session": "s1", "job": "j1", "task": "t1", "session_key": "k1"}
    assert peek_reply_to(b"garbage") is None


def test_session_key_travels_in_tasks_and_results():
    assert decode_task(encode_task(make_task(session_key="k1"))).session_key == "k1"
    result = ResultRecord(session="s", job="j", task="t", status="ok", session_key="k1")
    assert decode_result(encode_result(result)).session_key == "k1"
    assert decode_task(encode_task(make_task())).session_key == ""  # none: the default


def test_a_version_1_json_body_is_a_clear_version_error():
    body = orjson.dumps({"v": 1, "session": "s", "job": "j", "task": "t", "command": "x.py",
                         "reply_to": {"queue": "r", "group": None}})  # fmt: skip
    for decode in (decode_task, decode_result):
        with pytest.raises(ProtocolError, match="unsupported protocol version 1") as info:
            decode(body)
        assert info.value.field == "v"
    assert peek_reply_to(body) is not None  # its sender can still be answered


def test_an_unknown_value_tag_is_a_protocol_error():
    data = msgspec.msgpack.decode(encode_task(make_task()))
    data["args"] = [msgspec.msgpack.Ext(99, b"?")]
    with pytest.raises(ProtocolError, match="unknown value tag 99"):
        decode_task(msgspec.msgpack.encode(data))
