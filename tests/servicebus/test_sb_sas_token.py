"""Engine credentials on Service Bus (issue #16 item 6): a SAS token signed on the client
side, in a connection string, works against the stand-in until it expires; an expired
token, one for another resource, or one signed with a wrong key is refused."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from servicebus_standin import DEFAULT_KEY, DEFAULT_KEY_NAME, check_sas

from realtime_batch.transport import Message, open_transport
from realtime_batch.transport.errors import PermissionDeniedError
from realtime_batch.transport.servicebus_sas import (
    parse_connection_string,
    sas_token,
    sas_token_connection_string,
    sas_token_expiry,
)


def _with_token(conn_str: str, token: str) -> str:
    parts = parse_connection_string(conn_str)
    kept = [f"{k}={v}" for k, v in parts.items() if not k.startswith("SharedAccessKey")]
    return ";".join([*kept, f"SharedAccessSignature={token}"])


def _round_trip(url: str, queue: str) -> list[bytes]:
    with open_transport(url, retry_total=0) as transport:
        transport.declare_queue(queue)
        transport.send(queue, Message(body=b"ping"))
        got = transport.receive(queue, max_messages=1, timeout=5)
        for delivery in got:
            transport.complete(delivery)
        return [d.message.body for d in got]


def test_a_fresh_token_works(conn_str, queue):
    url, expiry = sas_token_connection_string(conn_str, timedelta(hours=1))
    assert "SharedAccessKey=" not in url and DEFAULT_KEY not in url
    assert "UseDevelopmentEmulator=true" in url
    assert sas_token_expiry(url) == expiry.replace(microsecond=0)
    assert _round_trip(url, queue) == [b"ping"]


@pytest.mark.parametrize(
    "why",
    ["expired", "wrong key", "other resource"],
)
def test_a_bad_token_is_refused(conn_str, queue, why):
    host = parse_connection_string(conn_str)["Endpoint"].removeprefix("sb://").strip("/")
    now = datetime.now(timezone.utc)
    resource, key, expiry = f"sb://{host}/", DEFAULT_KEY, now + timedelta(hours=1)
    if why == "expired":
        expiry = now - timedelta(minutes=1)
    elif why == "wrong key":
        key = "not-" + DEFAULT_KEY
    else:
        resource = f"sb://{host}/some-other-queue"
    url = _with_token(conn_str, sas_token(resource, DEFAULT_KEY_NAME, key, expiry))
    with pytest.raises(PermissionDeniedError, match="credential was refused"):
        _round_trip(url, queue)


def test_the_standin_checks_expiry_resource_and_signature():
    now = datetime.now(timezone.utc)
    name, key = DEFAULT_KEY_NAME, DEFAULT_KEY
    fresh = sas_token("sb://127.0.0.1:5672/", name, key, now + timedelta(minutes=5))
    expired = sas_token("sb://127.0.0.1:5672/", name, key, now - timedelta(seconds=5))
    one_queue = sas_token("sb://127.0.0.1:5672/results", name, key, now + timedelta(minutes=5))
    audience = "sb://127.0.0.1:5672/tasks"
    assert check_sas(fresh, name, key, audience)
    assert not check_sas(expired, name, key, audience)
    assert not check_sas(one_queue, name, key, audience)
    assert check_sas(one_queue, name, key, "sb://127.0.0.1:5672/results/$management")
    assert not check_sas(fresh, name, "other", audience)


def test_signing_needs_a_key_and_a_positive_lifetime(conn_str):
    with pytest.raises(ValueError, match="SharedAccessKey"):
        sas_token_connection_string("Endpoint=sb://ns/;SharedAccessKeyName=x", timedelta(1))
    with pytest.raises(ValueError, match="positive"):
        sas_token_connection_string(conn_str, timedelta(0))
    with pytest.raises(ValueError, match="Endpoint"):
        sas_token_connection_string("SharedAccessKey=x", timedelta(1))
