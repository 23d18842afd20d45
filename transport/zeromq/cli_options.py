"""Click options of the commands that connect to a ZeroMQ broker (``rtbatch engine``, ``dlq``).

Kept apart from ``cli`` (``rtbatch broker`` and ``keys``) so that a command which
only connects does not import the broker: every engine of a pool starts with this.
Without a CURVE key it does not import ``zmq`` either (a Service Bus engine has no use
for it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

__all__ = ["curve_key_options"]


def curve_key_options(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command ``--curve-server-key`` and ``--curve-secret-key-file`` (and their
    environment variables); it receives them as ``curve_options``, the transport options
    (``{}`` without CURVE). ``role``: the role the key should have, for the help text."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def command(
            *args: Any, curve_server_key: str | None, curve_secret_key_file: str | None,
            **kwargs: Any,
        ) -> Any:  # fmt: skip
            options: dict[str, str] = {}
            if curve_server_key is not None or curve_secret_key_file is not None:
                from .curve import curve_transport_options  # imports zmq: not without CURVE

                try:
                    options = curve_transport_options(curve_server_key, curve_secret_key_file)
                except ValueError as exc:
                    raise click.UsageError(str(exc)) from None
            return func(*args, curve_options=options, **kwargs)

        command = click.option(
            "--curve-server-key",
            default=None,
            envvar="RTBATCH_CURVE_SERVER_KEY",
            help="The broker's CURVE public key: its .key file or 40-character Z85 text "
            "(env RTBATCH_CURVE_SERVER_KEY).",
        )(command)
        return click.option(
            "--curve-secret-key-file",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            envvar="RTBATCH_CURVE_SECRET_KEY_FILE",
            help=f"The CURVE .key_secret file of a key authorized as {role}, for a zmq:// "
            "broker started with CURVE (env RTBATCH_CURVE_SECRET_KEY_FILE).",
        )(command)

    return decorate
