"""Service Bus shared access signatures: a token instead of a key for engines.

A SAS *key* (``SharedAccessKey=`` in a connection string) lets its holder sign tokens
forever. Nodes get a *token* instead: ``SharedAccessSignature sr=...&sig=...&se=...&skn=...``
signed here with the policy's key, valid until ``se`` and only for resources under
``sr``. The SDK takes it in a connection string
(``Endpoint=sb://...;SharedAccessSignature=SharedAccessSignature sr=...``) and
presents it on each connection; the service refuses it once expired.

The rights are the signing policy's (Listen, Send, Manage): a token cannot narrow
them. ``sr`` narrows *where*: the namespace (every entity) or one entity's URI and
what lies below it. An engine uses several entities (the task queue, ``control``,
results and mailboxes) over one connection, so its token is scoped to the namespace,
and the policy is what limits its rights: sign with a namespace policy holding
Listen and Send only (never ``RootManageSharedAccessKey``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, quote_plus, urlsplit

__all__ = [
    "parse_connection_string",
    "sas_token",
    "sas_token_connection_string",
    "sas_token_expiry",
    "servicebus_namespace",
]


def parse_connection_string(conn_str: str) -> dict[str, str]:
    """``Key=value;...`` pairs of a connection string, keys as written.

    Raises:
        ValueError: it has no ``Endpoint``.
    """
    parts: dict[str, str] = {}
    for item in conn_str.strip().split(";"):
        if item.strip():
            key, _, value = item.partition("=")
            parts[key.strip()] = value.strip()
    if not any(k.lower() == "endpoint" for k in parts):
        raise ValueError("not a Service Bus connection string: no Endpoint=")
    return parts


def _get(parts: dict[str, str], name: str) -> str | None:
    return next((v for k, v in parts.items() if k.lower() == name.lower()), None)


def servicebus_namespace(conn_str: str) -> str:
    """The namespace host of a connection string (``NAME.servicebus.windows.net``)."""
    endpoint = _get(parse_connection_string(conn_str), "Endpoint") or ""
    return urlsplit(endpoint).netloc or endpoint.removeprefix("sb://").strip("/")


def sas_token(resource: str, key_name: str, key: str, expiry: datetime) -> str:
    """A ``SharedAccessSignature`` token for ``resource`` (``sb://HOST/`` or an entity URI).

    The signature is base64(HMAC-SHA256(key as UTF-8 text, quote_plus(sr) + "\\n" + se)).
    """
    sr = quote_plus(resource)
    se = str(int(expiry.timestamp()))
    digest = hmac.new(key.encode(), f"{sr}\n{se}".encode(), hashlib.sha256).digest()
    sig = quote_plus(base64.b64encode(digest).decode())
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn={key_name}"


def sas_token_connection_string(
    conn_str: str, lifetime: timedelta, *, now: datetime | None = None
) -> tuple[str, datetime]:
    """A connection string holding a namespace-scoped token instead of the key.

    Args:
        conn_str: ``Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...``.
        lifetime: how long the token is valid.
        now: the signing time (default: the current time).

    Returns:
        The new connection string and the token's expiry.

    Raises:
        ValueError: ``conn_str`` holds no key, or ``lifetime`` is not positive.
    """
    if lifetime <= timedelta(0):
        raise ValueError(f"a token lifetime must be positive, not {lifetime}")
    parts = parse_connection_string(conn_str)
    key_name, key = _get(parts, "SharedAccessKeyName"), _get(parts, "SharedAccessKey")
    if not key_name or not key:
        raise ValueError("the connection string holds no SharedAccessKeyName/SharedAccessKey")
    expiry = (now or datetime.now(timezone.utc)) + lifetime
    token = sas_token(f"sb://{servicebus_namespace(conn_str)}/", key_name, key, expiry)
    kept = [
        f"{k}={v}"
        for k, v in parts.items()
        if k.lower() not in ("sharedaccesskeyname", "sharedaccesskey", "sharedaccesssignature")
    ]
    return ";".join([*kept, f"SharedAccessSignature={token}"]), expiry


def sas_token_expiry(text: str) -> datetime | None:
    """When the SAS token in ``text`` (a token or a connection string) expires; None
    when it holds no token."""
    marker = text.find("SharedAccessSignature sr=")
    if marker < 0:
        return None
    query = text[marker + len("SharedAccessSignature ") :].split(";", 1)[0]
    se = parse_qs(query).get("se")
    if not se:
        return None
    return datetime.fromtimestamp(int(se[0]), timezone.utc)
