"""Fuzzing the wire-protocol decoders: whatever the bytes, only ``ProtocolError`` comes out.

``decode_task`` runs on every message an engine receives and ``decode_result`` on
every message a client receives, so either may see anything anybody put on a
queue. Four kinds of input: arbitrary bytes, arbitrary documents (MessagePack, and JSON as
version 1 sent), arbitrary value tags, and valid
records with one field replaced, removed or added. A body that decodes must also
encode again (the engine and the client pass decoded records on).

Bounded for CI (300 examples per test). A longer run::

    RTBATCH_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_protocol_fuzz.py

``RTBATCH_FAULT_REPORT=path.json`` adds the number of inputs tried to the
fault-suite figures (see ``docs/reliability.md``).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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

EXAMPLES = int(os.environ.get("RTBATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a loaded CI machine is not a bug in the decoder
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DECODERS = {"task": (decode_task, encode_task), "result": (decode_result, encode_result)}

#: inputs tried per test, written to the fault report at the end of the module
tried: Counter[str] = Counter()

# JSON values as orjson decodes them: 64-bit integers, finite floats, any text.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.binary(max_size=30)
)


def _nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        json_scalars
        | st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    )


# Nested three deep by hand: st.recursive's leaf budget made replays inconsistent
# (FlakyStrategyDefinition) in long runs.
json_values = _nest(_nest(_nest(json_scalars)))

VALID_TASK = msgspec.msgpack.decode(
    encode_task(
        TaskRecord(
            session="s",
            job="j",
            task="t1",
            command="echo.py",
            reply_to=ReplyTo("results", "s"),
            args=[1, "two"],
            kwargs={"k": 3},
            timeout=5.0,
            deadline=1e10,
            retry_on=["ValueError"],
        )
    )
)
VALID_RESULT = msgspec.msgpack.decode(
    encode_result(
        ResultRecord(session="s", job="j", task="t1", status="ok", value={"x": [1, 2]}, engine="e")
    )
)
TASK_KEYS = sorted({*VALID_TASK, "reply_to.queue", "reply_to.group"})
RESULT_KEYS = sorted({*VALID_RESULT, "error", "error.type", "error.message", "error.traceback"})


def _decode_or_protocol_error(kind: str, body: bytes) -> Any:
    """Decode ``body``; a ``ProtocolError`` is fine, any other exception fails the test."""
    decode, encode = DECODERS[kind]
    tried[kind] += 1
    try:
        record = decode(body)
    except ProtocolError as exc:
        assert str(exc)  # names what is wrong
        return None
    encode(record)  # what decodes is a record the other side can pass on
    return record


def _mutate(base: dict[str, Any], path: str, action: str, value: Any) -> dict[str, Any]:
    data = msgspec.msgpack.decode(msgspec.msgpack.encode(base))  # deep copy
    target = data
    *parents, key = path.split(".")
    for parent in parents:
        if not isinstance(target.get(parent), dict):
            target[parent] = {}
        target = target[parent]
    if action == "drop":
        target.pop(key, None)
    else:
        target[key] = value
    return data


@pytest.mark.parametrize("kind", sorted(DECODERS))
@FUZZ
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_protocol_error(kind, body):
    _decode_or_protocol_error(kind, body)


@pytest.mark.parametrize("kind", sorted(DECODERS))
@FUZZ
@given(document=json_values)
def test_arbitrary_documents_only_raise_protocol_error(kind, document):
    try:
        old = orjson.dumps(document)  # version 1 was JSON
    except TypeError:  # bytes: JSON has none
        old = b""
    _decode_or_protocol_error(kind, old)
    _decode_or_protocol_error(kind, msgspec.msgpack.encode(document))


@pytest.mark.parametrize("kind", sorted(DECODERS))
@FUZZ
@given(code=st.integers(min_value=-128, max_value=127), data=st.binary(max_size=40))
def test_arbitrary_value_tags_only_raise_protocol_error(kind, code, data):
    base = VALID_TASK if kind == "task" else VALID_RESULT
    body = {**base, "args" if kind == "task" else "value": [msgspec.msgpack.Ext(code, data)]}
    _decode_or_protocol_error(kind, msgspec.msgpack.encode(body))


@FUZZ
@given(
    path=st.sampled_from(TASK_KEYS),
    action=st.sampled_from(["drop", "replace"]),
    value=json_values,
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=2),
)
def test_task_with_a_field_changed_decodes_or_raises_protocol_error(path, action, value, extra):
    data = {**extra, **_mutate(VALID_TASK, path, action, value)}
    record = _decode_or_protocol_error("task", msgspec.msgpack.encode(data))
    if record is not None:  # accepted: the checks the engine relies on hold
        assert isinstance(record.command, str) and record.command
        assert isinstance(record.reply_to.queue, str)
        assert type(record.attempt) is int and record.attempt >= 1
        assert record.timeout is None or record.timeout > 0
        assert isinstance(record.args, list) and isinstance(record.kwargs, dict)


@FUZZ
@given(
    path=st.sampled_from(RESULT_KEYS),
    action=st.sampled_from(["drop", "replace"]),
    value=json_values,
)
def test_result_with_a_field_changed_decodes_or_raises_protocol_error(path, action, value):
    record = _decode_or_protocol_error(
        "result", msgspec.msgpack.encode(_mutate(VALID_RESULT, path, action, value))
    )
    if record is not None:
        assert record.status in ("ok", "error", "expired", "cancelled")
        assert isinstance(record.task, str)
        assert record.error is None or isinstance(record.error.type, str)


def test_valid_records_decode():  # the mutations above start from records that are valid
    assert decode_task(msgspec.msgpack.encode(VALID_TASK)).task == "t1"
    assert decode_result(msgspec.msgpack.encode(VALID_RESULT)).value == {"x": [1, 2]}


@pytest.fixture(scope="module", autouse=True)
def _report_inputs_tried(request):
    failed_before = request.session.testsfailed
    yield
    target = os.environ.get("RTBATCH_FAULT_REPORT")
    if target and tried:
        from faults.faultkit import FaultReport

        report = FaultReport()
        report.record(
            "fuzz_protocol",
            decoders="decode_task, decode_result",
            inputs_tried=sum(tried.values()),
            examples_per_test=EXAMPLES,
            failed_tests=request.session.testsfailed - failed_before,
        )
        report.write(Path(target))
