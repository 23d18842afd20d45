"""Issue 15, "no authorization between clients on the ZeroMQ broker": each attack, refused.

A broker runs in a thread with CURVE and an authorized-keys directory with roles;
clients, an engine and an admin connect with their own keys. The attacker is a
``client`` key in the older flat layout (``DIR/*.key``), which the broker always
accepted: every attack below worked with it before roles existed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import zmq

from realtime_batch.transport import (
    ConnectionLostError,
    Delivery,
    Message,
    PermissionDeniedError,
    QueueSettingsConflict,
    TransportTimeoutError,
    dead_letter_queue,
)
from realtime_batch.transport.zeromq.broker import Broker
from realtime_batch.transport.zeromq.client import ZmqTransport
from realtime_batch.transport.zeromq.curve import BrokerCurve, authorize_key, generate_keys

TASKS, RESULTS, CONTROL = "tasks", "results", "control"


class CurveSetup:
    """Keys with roles, a CURVE broker in a thread, and transports opened per key."""

    def __init__(self, root: Path) -> None:
        self.keys = root / "keys"
        self.authorized = root / "authorized"
        generate_keys(self.keys, "broker")
        self.authorized.mkdir()
        for name, role in (("engine", "engine"), ("admin", "admin"), ("alice", "client")):
            public, _secret = generate_keys(self.keys, name)
            authorize_key(public, self.authorized, role)
        public, _secret = generate_keys(self.keys, "mallory")  # flat layout: role client
        (self.authorized / "mallory.key").write_bytes(public.read_bytes())
        self.context = zmq.Context()
        curve = BrokerCurve(self.keys / "broker.key_secret", self.authorized)
        self.broker = Broker("tcp://127.0.0.1:0", curve=curve, context=self.context)
        self.url = "zmq://127.0.0.1:" + self.broker.endpoint.rsplit(":", 1)[1]
        self.thread = threading.Thread(target=self.broker.run, daemon=True)
        self.thread.start()
        self.transports: list[ZmqTransport] = []

    def open(self, name: str) -> ZmqTransport:
        transport = ZmqTransport(
            self.url,
            curve_server_key=self.keys / "broker.key",
            curve_secret_key=self.keys / f"{name}.key_secret",
            request_timeout=10.0,
        )
        self.transports.append(transport)
        return transport

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        self.broker.stop()
        self.thread.join(10)
        self.broker.close()
        self.context.term()


@pytest.fixture
def setup(tmp_path):
    curve = CurveSetup(tmp_path)
    try:
        engine = curve.open("engine")
        engine.declare_queue(TASKS)
        engine.declare_queue(RESULTS, grouped=True)
        engine.declare_queue(CONTROL, grouped=True)
        yield curve
    finally:
        curve.close()


def _forged(token: str, queue: str) -> Delivery:
    """A delivery carrying someone else's lease token (tokens are all a settle sends)."""
    return Delivery(Message(b"?"), queue, 1, time.time() + 30, token)


def test_a_client_cannot_read_the_task_queue(setup):
    alice, mallory, engine = setup.open("alice"), setup.open("mallory"), setup.open("engine")
    alice.send(TASKS, Message(b"alice's secret task"))
    with pytest.raises(PermissionDeniedError):
        mallory.receive(TASKS, timeout=0)
    [delivery] = engine.receive(TASKS, timeout=5)  # the engine may, and the task is intact
    assert delivery.message.body == b"alice's secret task"
    with pytest.raises(PermissionDeniedError):  # nor give back (or settle) an engine's lease
        mallory.give_back(_forged(delivery.lock_token, TASKS))
    with pytest.raises(PermissionDeniedError):
        mallory.complete(_forged(delivery.lock_token, TASKS))
    engine.complete(delivery)


def test_a_client_cannot_forge_results(setup):
    alice, mallory, engine = setup.open("alice"), setup.open("mallory"), setup.open("engine")
    group = alice.mailbox_prefix + "session"
    with pytest.raises(PermissionDeniedError):
        mallory.send(RESULTS, Message(b"forged result", group=group))
    engine.send(RESULTS, Message(b"real result", group=group))
    assert [d.message.body for d in alice.receive(RESULTS, timeout=5, group=group)] == [
        b"real result"
    ]


def test_a_client_reads_and_settles_only_its_own_mailbox(setup):
    alice, mallory, engine = setup.open("alice"), setup.open("mallory"), setup.open("engine")
    alice_group = alice.mailbox_prefix + "session"
    engine.send(RESULTS, Message(b"for alice", group=alice_group))
    with pytest.raises(PermissionDeniedError):
        mallory.receive(RESULTS, timeout=0, group=alice_group)
    with pytest.raises(PermissionDeniedError):  # no group: any group's results
        mallory.receive(RESULTS, timeout=0)
    with pytest.raises(PermissionDeniedError):  # a group named like alice's, but not its key
        mallory.receive(RESULTS, timeout=0, group="session")
    [delivery] = alice.receive(RESULTS, timeout=5, group=alice_group)
    with pytest.raises(PermissionDeniedError):
        mallory.complete(_forged(delivery.lock_token, RESULTS))
    with pytest.raises(PermissionDeniedError):
        mallory.settle_and_receive(
            RESULTS, [], [_forged(delivery.lock_token, RESULTS)], RESULTS,
            timeout=0, group=mallory.mailbox_prefix + "x",
        )  # fmt: skip
    alice.complete(delivery)  # still alice's lease
    own = mallory.mailbox_prefix + "mine"
    engine.send(RESULTS, Message(b"for mallory", group=own))
    [mine] = mallory.receive(RESULTS, timeout=5, group=own)
    mallory.complete(mine)


def test_only_an_admin_touches_dead_letters(setup):
    mallory, engine, admin = setup.open("mallory"), setup.open("engine"), setup.open("admin")
    dlq = dead_letter_queue(TASKS)
    engine.send(TASKS, Message(b"poison"))
    [delivery] = engine.receive(TASKS, timeout=5)
    engine.dead_letter(delivery, "test", "poison task")
    for who in (mallory, engine):
        with pytest.raises(PermissionDeniedError):
            who.send(dlq, Message(b"fake dead letter"))
        with pytest.raises(PermissionDeniedError):  # reading it is the first step of a purge
            who.receive(dlq, timeout=0)
    [dead] = admin.receive(dlq, timeout=5)
    assert dead.message.body == b"poison"
    admin.complete(dead)


def test_only_an_admin_declares_non_default_settings(setup):
    mallory, engine, admin = setup.open("mallory"), setup.open("engine"), setup.open("admin")
    for who in (mallory, engine):
        with pytest.raises(PermissionDeniedError):
            who.declare_queue("fresh", lock_duration=0.05, max_delivery_count=1)
    mallory.declare_queue("fresh")  # defaults or no settings: anyone
    engine.declare_queue("fresh", lock_duration=30.0, max_delivery_count=10)
    admin.declare_queue("other", lock_duration=5.0, max_delivery_count=3)
    with pytest.raises(QueueSettingsConflict):  # no silent keep of the first settings
        engine.declare_queue("other", lock_duration=30.0, max_delivery_count=10)


def test_an_engine_cannot_read_mailboxes(setup):
    alice, engine = setup.open("alice"), setup.open("engine")
    group = alice.mailbox_prefix + "s"
    engine.send(RESULTS, Message(b"r", group=group))
    with pytest.raises(PermissionDeniedError):
        engine.receive(RESULTS, timeout=0, group=group)
    with pytest.raises(PermissionDeniedError):  # nor impersonate a client's cancel
        engine.send(CONTROL, Message(b"{}", group="engine-1"))


def test_cancel_requests_go_from_clients_to_engines_only(setup):
    alice, engine = setup.open("alice"), setup.open("engine")
    alice.send(CONTROL, Message(b"{}", group="engine-1"))
    assert len(engine.receive(CONTROL, timeout=5, group="engine-1")) == 1
    with pytest.raises(PermissionDeniedError):
        alice.receive(CONTROL, timeout=0, group="engine-1")


def test_a_key_in_no_role_directory_cannot_connect(setup, tmp_path):
    generate_keys(tmp_path / "stranger", "stranger")
    stranger = ZmqTransport(
        setup.url,
        curve_server_key=setup.keys / "broker.key",
        curve_secret_key=tmp_path / "stranger" / "stranger.key_secret",
        request_timeout=1.0,
        heartbeat_interval=0.2,
    )
    try:
        with pytest.raises((ConnectionLostError, TransportTimeoutError)):  # handshake refused
            stranger.declare_queue(TASKS)
    finally:
        stranger.close()
