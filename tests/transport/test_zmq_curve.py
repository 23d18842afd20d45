"""CURVE authentication of the ZeroMQ broker, and ``rtbatch keys``."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from realtime_batch.cli import main
from realtime_batch.transport import ConnectionLostError, Message, open_transport
from realtime_batch.transport.zeromq.curve import is_loopback_endpoint, load_public_key

FAST_FAILURE = {"heartbeat_interval": 0.1, "request_timeout": 3.0}


@pytest.fixture
def key_dir(tmp_path):
    """Broker, client and stranger key pairs; only the client is authorized, with the
    engine role (it sends and receives tasks)."""
    runner = CliRunner()
    for name in ("broker", "client", "stranger"):
        args = ["keys", "generate", "--dir", str(tmp_path), "--name", name]
        if name == "client":
            args += ["--role", "engine", "--authorize", str(tmp_path / "authorized")]
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    return tmp_path


def test_keys_generate_refuses_to_overwrite(key_dir):
    result = CliRunner().invoke(
        main, ["keys", "generate", "--dir", str(key_dir), "--name", "client"]
    )
    assert result.exit_code != 0
    assert "not overwriting" in result.output
    assert len(load_public_key(key_dir / "client.key")) == 40
    assert (key_dir / "client.key_secret").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://localhost:1", True),
        ("tcp://[::1]:1", True),
        ("ipc:///tmp/x", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://10.1.2.3:5555", False),
    ],
)
def test_is_loopback_endpoint(endpoint, loopback):
    assert is_loopback_endpoint(endpoint) is loopback


def test_non_loopback_bind_without_keys_is_refused():
    result = CliRunner().invoke(main, ["broker", "--bind", "tcp://0.0.0.0:0"])
    assert result.exit_code == 2
    assert "--insecure" in result.output


def test_authorized_client_works_and_others_are_shut_out(zmq_broker_factory, key_dir, queue):
    broker = zmq_broker_factory(
        "--curve-secret-key",
        str(key_dir / "broker.key_secret"),
        "--authorized-keys",
        str(key_dir / "authorized"),
    )
    server_key = key_dir / "broker.key"
    with open_transport(
        broker.url, curve_server_key=server_key, curve_secret_key=key_dir / "client.key_secret"
    ) as t:
        t.declare_queue(queue)
        t.send(queue, Message(b"secret task"))
        [d] = t.receive(queue, timeout=10)
        assert d.message.body == b"secret task"
        t.complete(d)

    stranger = open_transport(
        broker.url,
        curve_server_key=server_key,
        curve_secret_key=key_dir / "stranger.key_secret",
        **FAST_FAILURE,
    )
    plain = open_transport(broker.url, **FAST_FAILURE)
    try:
        for intruder in (stranger, plain):
            with pytest.raises(ConnectionLostError):
                intruder.declare_queue(queue)
    finally:
        stranger.close()
        plain.close()
