"""rtbatch dlq: options after the sub-command, and ids given by a unique prefix."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

from realtime_batch.cli import main
from realtime_batch.transport import Message, open_transport


@pytest.fixture
def url():
    url = f"memory://dlq-opts-{uuid.uuid4().hex}"
    with open_transport(url) as transport:
        transport.declare_queue("work")
        ids = ["abc-1111", "abc-2222", "xyz-3333"]
        transport.send("work", [Message(f"body {i}".encode(), id=i) for i in ids])
        for delivery in transport.receive("work", max_messages=3, timeout=1):
            transport.dead_letter(delivery, "Broken", f"bad {delivery.message.id}")
        yield url


def invoke(*args: str):
    return CliRunner().invoke(main, ["dlq", *args])


def test_transport_and_queue_after_the_subcommand(url):
    result = invoke("list", "--transport", url, "--queue", "work", "--json")
    assert result.exit_code == 0, result.output
    assert result.output.count('"reason": "Broken"') == 3


def test_show_takes_a_unique_prefix(url):
    result = invoke("show", "--transport", url, "--queue", "work", "xyz")
    assert result.exit_code == 0, result.output
    assert "body xyz-3333" in result.output


def test_show_refuses_an_ambiguous_prefix_naming_the_matches(url):
    result = invoke("--transport", url, "--queue", "work", "show", "abc")
    assert result.exit_code != 0
    assert "2 dead letters start with 'abc'" in result.output
    assert "abc-1111" in result.output and "abc-2222" in result.output
