"""CURVE authentication and encryption for the broker and its clients, and key roles.

Key files are the ZeroMQ certificate format written by ``zmq.auth``
(``NAME.key`` holds the public key, ``NAME.key_secret`` both keys):

* ``rtbatch keys generate --dir keys --name broker`` for the broker, and one pair
  per client, engine and admin with ``--role ROLE --authorize DIR``, which also
  copies the public key into the authorized-keys directory ``DIR/ROLE/``;
* the broker runs with ``--curve-secret-key keys/broker.key_secret`` and
  ``--authorized-keys DIR``;
* a client opens ``zmq://HOST:PORT`` with ``curve_server_key="keys/broker.key"``
  and ``curve_secret_key="keys/client.key_secret"``.

The authorized-keys directory records each key's role (see ``authz``)::

    DIR/client/*.key   DIR/engine/*.key   DIR/admin/*.key

``.key`` files directly in ``DIR`` (the older flat layout) count as ``client``.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq

from .authz import CLIENT, ROLES

__all__ = [
    "BrokerCurve",
    "apply_client_keys",
    "authorize_key",
    "curve_transport_options",
    "generate_keys",
    "is_loopback_endpoint",
    "load_public_key",
    "load_roles",
    "load_secret_key",
]

logger = logging.getLogger(__name__)


def generate_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write a new key pair ``NAME.key`` / ``NAME.key_secret`` into ``directory``."""
    import zmq.auth

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(target, name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def authorize_key(public_key_file: str | Path, directory: str | Path, role: str) -> Path:
    """Copy a ``.key`` file into the authorized-keys ``directory`` under ``role``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    source = Path(public_key_file)
    target = Path(directory) / role / source.name
    if target.exists():
        raise FileExistsError(f"{target} exists; not overwriting an authorized key")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


def load_roles(directory: str | Path) -> dict[str, str]:
    """Map each authorized public key (Z85 text) to its role.

    Raises:
        ValueError: a key is authorized under two roles.
    """
    import zmq.auth

    root = Path(directory)
    roles: dict[str, str] = {}
    places = [(CLIENT, root)] + [(role, root / role) for role in ROLES]
    for role, place in places:
        if not place.is_dir():
            continue
        keys = zmq.auth.load_certificates(place)
        if place == root and keys:
            logger.warning(
                "%d key(s) directly in %s count as role %r (least privilege); move them to "
                "%s/ROLE/ to give another role",
                len(keys), root, CLIENT, root,
            )  # fmt: skip
        for key in keys:
            text = key.decode() if isinstance(key, bytes) else str(key)
            if roles.get(text, role) != role:
                raise ValueError(f"key {text} is authorized as both {roles[text]} and {role}")
            roles[text] = role
    return roles


def curve_transport_options(server_key: str | None, secret_key_file: str | None) -> dict[str, str]:
    """``zmq://`` transport options for a CURVE identity (both keys, or neither: ``{}``).

    Args:
        server_key: the broker's public key (``.key`` file or Z85 text).
        secret_key_file: this identity's ``.key_secret`` file.

    Raises:
        ValueError: only one of the two was given.
    """
    if (server_key is None) != (secret_key_file is None):
        raise ValueError(
            "the broker's public key (--curve-server-key, RTBATCH_CURVE_SERVER_KEY) and "
            "this identity's key pair (--curve-secret-key-file, "
            "RTBATCH_CURVE_SECRET_KEY_FILE) go together"
        )
    if server_key is None or secret_key_file is None:
        return {}
    return {"curve_server_key": server_key, "curve_secret_key": secret_key_file}


def load_secret_key(path: str | Path) -> tuple[bytes, bytes]:
    """Return ``(public, secret)`` from a ``.key_secret`` file."""
    import zmq.auth

    public, secret = zmq.auth.load_certificate(path)
    if not secret:
        raise ValueError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public_key(value: str | bytes | Path) -> bytes:
    """A public key given as its 40-character Z85 text or as a ``.key`` file."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and len(value) == 40 and not Path(value).exists():
        return value.encode()
    import zmq.auth

    public, _secret = zmq.auth.load_certificate(value)
    return public


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ``tcp://`` endpoints on a loopback address, and for ipc/inproc."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface or host name
        return False


def apply_client_keys(
    sock: zmq.Socket, server_key: bytes, keypair: tuple[bytes, bytes] | None
) -> None:
    """Make ``sock`` a CURVE client of the server with public key ``server_key``."""
    public, secret = keypair if keypair is not None else zmq.curve_keypair()
    sock.curve_serverkey = server_key
    sock.curve_publickey = public
    sock.curve_secretkey = secret


class _RoleProvider:
    """ZAP credentials provider: a key is let in when it has a role."""

    def __init__(self, roles: dict[str, str]) -> None:
        self.roles = roles

    def callback(self, domain: str, key: bytes) -> bool:
        return key.decode() in self.roles


class BrokerCurve:
    """The broker's CURVE setup: its key pair, the keys' roles and a ZAP authenticator.

    Args:
        secret_key_file: the broker's ``.key_secret`` file.
        authorized_keys: the authorized-keys directory (layout in the module docstring);
            ``None`` lets any client that knows the broker's public key in, with no
            roles (the traffic is still encrypted).

    Attributes:
        roles: public key (Z85 text) -> role; ``None`` without authorized keys.
    """

    def __init__(self, secret_key_file: str | Path, authorized_keys: str | Path | None) -> None:
        self.public, self.secret = load_secret_key(secret_key_file)
        self.authorized_keys = authorized_keys
        self.roles = None if authorized_keys is None else load_roles(authorized_keys)
        self._authenticator: Any = None

    def apply(self, context: zmq.Context, sock: zmq.Socket) -> None:
        """Start the authenticator and make ``sock`` a CURVE server (before binding)."""
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        self._authenticator = ThreadAuthenticator(context)
        self._authenticator.start()
        if self.roles is None:
            self._authenticator.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
        else:
            self._authenticator.configure_curve_callback(
                domain="*", credentials_provider=_RoleProvider(self.roles)
            )
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret

    def stop(self) -> None:
        """Stop the authenticator thread."""
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
