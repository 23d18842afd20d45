"""CURVE authentication and encryption for the broker and its clients.

Key files are the ZeroMQ certificate format written by ``zmq.auth``
(``NAME.key`` holds the public key, ``NAME.key_secret`` both keys):

* ``rtbatch keys generate --dir keys --name broker`` (and one per client);
* the broker runs with ``--curve-secret-key keys/broker.key_secret`` and
  ``--authorized-keys DIR`` (a directory of the clients' ``.key`` files);
* a client opens ``zmq://HOST:PORT`` with ``curve_server_key="keys/broker.key"``
  and ``curve_secret_key="keys/client.key_secret"``.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq

__all__ = [
    "BrokerCurve",
    "apply_client_keys",
    "generate_keys",
    "is_loopback_endpoint",
    "load_public_key",
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


class BrokerCurve:
    """The broker's CURVE setup: its key pair and a ZAP authenticator thread.

    Args:
        secret_key_file: the broker's ``.key_secret`` file.
        authorized_keys: directory of client ``.key`` files allowed to connect;
            ``None`` lets any client that knows the broker's public key in (the
            traffic is still encrypted).
    """

    def __init__(self, secret_key_file: str | Path, authorized_keys: str | Path | None) -> None:
        self.public, self.secret = load_secret_key(secret_key_file)
        self.authorized_keys = authorized_keys
        self._authenticator: Any = None

    def apply(self, context: zmq.Context, sock: zmq.Socket) -> None:
        """Start the authenticator and make ``sock`` a CURVE server (before binding)."""
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        self._authenticator = ThreadAuthenticator(context)
        self._authenticator.start()
        location = (
            str(self.authorized_keys)
            if self.authorized_keys is not None
            else zmq.auth.CURVE_ALLOW_ANY
        )
        self._authenticator.configure_curve(domain="*", location=location)
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret

    def stop(self) -> None:
        """Stop the authenticator thread."""
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
