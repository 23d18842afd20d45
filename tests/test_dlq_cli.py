"""rtbatch dlq list|show|replay|purge over an in-process memory transport."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner

from realtime_batch.cli import main
from realtime_batch.protocol import ResultRecord, encode_result
from realtime_batch.transport import Message, dead_letter_queue, open_transport


@pytest.fixture
def setup():
    url = f"memory://dlq-{uuid.uuid4().hex}"
    t = open_transport(url)
    t.declare_queue("tasks")
    body = json.dumps({"v": 1, "session": "s", "job": "j", "task": "t7", "command": "x.py"})
    t.send("tasks", [Message(body.encode(), id="m1"), Message(b"garbage", id="m2")])
    for d in t.receive("tasks", max_messages=2, timeout=1):
        t.dead_letter(d, "MalformedTask", f"bad {d.message.id}")
    yield url, t
    t.close()


def run(url, *args, input=None):
    result = CliRunner().invoke(main, ["dlq", "--transport", url, *args], input=input)
    assert result.exit_code == 0, result.output
    return result.output


def test_list_shows_reasons_and_keeps_messages(setup):
    url, t = setup
    rows = [json.loads(line) for line in run(url, "list", "--json").splitlines()]
    assert {r["id"] for r in rows} == {"m1", "m2"}
    assert {r["reason"] for r in rows} == {"MalformedTask"}
    assert next(r for r in rows if r["id"] == "m1")["task"] == "t7"
    assert "MalformedTask" in run(url, "list")
    # listing did not consume them
    assert len(t.receive(dead_letter_queue("tasks"), max_messages=5, timeout=1)) == 2


def test_show_prints_one_message(setup):
    url, _ = setup
    out = run(url, "show", "m2")
    assert "garbage" in out and "bad m2" in out
    result = CliRunner().invoke(main, ["dlq", "--transport", url, "show", "nope"])
    assert result.exit_code != 0 and "no dead letter" in result.output


def test_replay_sends_back_without_dead_letter_properties(setup):
    url, t = setup
    assert "replayed 2" in run(url, "replay")
    got = t.receive("tasks", max_messages=5, timeout=1)
    assert sorted(d.message.body[:7] for d in got) == [b"garbage", b'{"v": 1']
    assert all("DeadLetterReason" not in d.message.properties for d in got)
    assert t.receive(dead_letter_queue("tasks"), timeout=0.2) == []


def test_purge_asks_then_deletes(setup):
    url, t = setup
    aborted = CliRunner().invoke(main, ["dlq", "--transport", url, "purge"], input="n\n")
    assert aborted.exit_code != 0
    assert "purged 2" in run(url, "purge", "--yes")
    assert t.receive(dead_letter_queue("tasks"), timeout=0.2) == []


def test_list_reads_protocol_v2_bodies():
    url = f"memory://dlq-{uuid.uuid4().hex}"
    with open_transport(url) as t:
        t.declare_queue("tasks")
        v2 = ResultRecord(session="s", job="j", task="t8", status="ok", value=b"\x00")
        t.send("tasks", [Message(encode_result(v2), id="m3")])  # MessagePack
        for d in t.receive("tasks", max_messages=1, timeout=1):
            t.dead_letter(d, "MalformedTask", "bad")
        [row] = [json.loads(line) for line in run(url, "list", "--json").splitlines()]
        assert row["task"] == "t8" and row["session"] == "s"
