"""The stand-in's administration API: what ``ServiceBusAdministrationClient`` asks of a namespace.

The service answers the administration client over HTTPS on the namespace's host, with
Atom XML entries holding ``QueueDescription`` elements. The SDK builds that address from
the connection string's endpoint, port included, and always uses HTTPS (even with
``UseDevelopmentEmulator=true``), so the stand-in serves it on its AMQP port: the first
byte a client sends tells the two apart (a TLS handshake starts with 0x16, AMQP with
``A``). ``MuxAcceptor`` makes that choice for the proton reactor; ``AdminRequestHandler``
serves the requests; ``tls_files`` makes the self-signed certificate (for 127.0.0.1 and
localhost) and ``trust`` makes this process and its children accept it.

What it serves: get a queue (``get_queue``, ``get_queue_runtime_properties``: an empty
feed when there is none, as the service answers), create one (PUT; 409 if it exists),
update one (PUT with ``If-Match: *``; sessions cannot be switched), and list the queues'
runtime properties (``$Resources/queues``, one page). Requests are signed with the
namespace's key (SAS) as on the service; a bad signature gets 401.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import logging
import os
import select
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree

import isodate
from proton._io import IO
from proton._reactor import Acceptor
from selfsigned_tls import write_self_signed

__all__ = ["AdminRequestHandler", "MuxAcceptor", "QueueEntity", "tls_files", "trust"]

log = logging.getLogger("servicebus_standin.admin")

ATOM = "http://www.w3.org/2005/Atom"
SB = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"
SB_COUNTS = "http://schemas.microsoft.com/netservices/2011/06/servicebus"
TLS_HANDSHAKE = 0x16
#: How long a new connection's first byte is waited for before it is taken as AMQP.
FIRST_BYTE_WAIT = 2.0


class QueueEntity:
    """What the administration API says of one queue."""

    def __init__(
        self,
        name: str,
        *,
        lock_duration: float,
        max_delivery_count: int,
        requires_session: bool,
        active: int = 0,
        dead_letter: int = 0,
    ) -> None:
        self.name = name
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.requires_session = requires_session
        self.active = active
        self.dead_letter = dead_letter


# -- TLS ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def tls_files() -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost and its key (made once per
    process, in a private temporary directory removed when the process exits):
    ``(cert_path, key_path)``."""
    directory = Path(tempfile.mkdtemp(prefix="sb-standin-tls-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    cert, key = write_self_signed(directory, "standin", lifetime=datetime.timedelta(days=7))
    return str(cert), str(key)


def trust(cert_path: str) -> str:
    """Make HTTPS clients of this process and of the processes it starts (``requests``,
    so the administration client) accept ``cert_path`` besides the usual authorities:
    writes a bundle beside it and points ``REQUESTS_CA_BUNDLE`` at it. Returns the bundle."""
    import certifi

    bundle = Path(cert_path).with_name("bundle.pem")
    if not bundle.exists():
        bundle.write_text(Path(certifi.where()).read_text() + "\n" + Path(cert_path).read_text())
    os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
    return str(bundle)


# -- the acceptor ----------------------------------------------------------------------------
class MuxAcceptor(Acceptor):
    """A proton acceptor that tells AMQP from HTTPS by a new connection's first byte.

    The reactor thread only accepts; a short-lived thread waits for the first byte (so
    a client that connects and says nothing holds up no one), then serves HTTPS itself
    (``serve_https(sock, peer)``) or asks the reactor thread, through
    ``call_in_reactor(fn)``, to attach the socket as an AMQP connection.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        serve_https: Callable[[socket.socket, Any], None],
        call_in_reactor: Callable[[Callable[[], None]], None],
    ) -> None:
        super().__init__(reactor, host, port)
        self._serve_https = serve_https
        self._call_in_reactor = call_in_reactor

    def on_selectable_readable(self, event: Any) -> None:
        sock, peer = IO.accept(self._selectable)
        threading.Thread(
            target=self._sort, args=(sock, peer), name="sb-standin-accept", daemon=True
        ).start()

    def _sort(self, sock: socket.socket, peer: Any) -> None:
        try:
            ready = select.select([sock], [], [], FIRST_BYTE_WAIT)[0]
            first = sock.recv(1, socket.MSG_PEEK) if ready else b""
        except OSError:
            first = b""
        if first and first[0] == TLS_HANDSHAKE:
            self._serve_https(sock, peer)
        else:
            self._call_in_reactor(lambda: self._attach_amqp(sock, peer))

    def _attach_amqp(self, sock: socket.socket, peer: Any) -> None:
        """What proton's own acceptor does with a new connection."""
        from proton import Transport, Url
        from proton._reactor import IOHandler

        r = self._reactor
        connection = r.connection(self._handler or r.handler)
        connection._acceptor = self
        connection.url = Url(host=peer[0], port=peer[1])
        transport = Transport(Transport.SERVER)
        transport.bind(connection)
        selectable = r.selectable(delegate=sock)
        selectable._transport = transport
        transport._selectable = selectable
        IOHandler.update(transport, selectable, r.now)


# -- XML -------------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    return isodate.duration_isoformat(datetime.timedelta(seconds=seconds))


def entry_xml(base: str, queue: QueueEntity) -> ElementTree.Element:
    """An Atom entry describing ``queue`` as the service does."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    entry = ElementTree.Element(f"{{{ATOM}}}entry")
    ElementTree.SubElement(entry, f"{{{ATOM}}}id").text = f"{base}/{queue.name}"
    ElementTree.SubElement(entry, f"{{{ATOM}}}title", type="text").text = queue.name
    ElementTree.SubElement(entry, f"{{{ATOM}}}updated").text = now
    ElementTree.SubElement(entry, f"{{{ATOM}}}link", rel="self", href=f"{base}/{queue.name}")
    content = ElementTree.SubElement(entry, f"{{{ATOM}}}content", type="application/xml")
    desc = ElementTree.SubElement(content, f"{{{SB}}}QueueDescription")
    fields = [
        ("LockDuration", _duration(queue.lock_duration)),
        ("MaxSizeInMegabytes", "1024"),
        ("RequiresDuplicateDetection", "false"),
        ("RequiresSession", str(queue.requires_session).lower()),
        ("DefaultMessageTimeToLive", "P10675199DT2H48M5.4775807S"),
        ("DeadLetteringOnMessageExpiration", str(not queue.requires_session).lower()),
        ("DuplicateDetectionHistoryTimeWindow", "PT10M"),
        ("MaxDeliveryCount", str(queue.max_delivery_count)),
        ("EnableBatchedOperations", "true"),
        ("SizeInBytes", "0"),
        ("MessageCount", str(queue.active + queue.dead_letter)),
        ("Status", "Active"),
        ("CreatedAt", now),
        ("UpdatedAt", now),
        ("AccessedAt", now),
    ]
    for tag, text in fields:
        ElementTree.SubElement(desc, f"{{{SB}}}{tag}").text = text
    counts = ElementTree.SubElement(desc, f"{{{SB}}}CountDetails")
    for tag, value in [
        ("ActiveMessageCount", queue.active),
        ("DeadLetterMessageCount", queue.dead_letter),
        ("ScheduledMessageCount", 0),
        ("TransferMessageCount", 0),
        ("TransferDeadLetterMessageCount", 0),
    ]:
        ElementTree.SubElement(counts, f"{{{SB_COUNTS}}}{tag}").text = str(value)
    return entry


def feed_xml(base: str, queues: list[QueueEntity]) -> ElementTree.Element:
    """An Atom feed of ``queues`` (no next link: one page)."""
    feed = ElementTree.Element(f"{{{ATOM}}}feed")
    ElementTree.SubElement(feed, f"{{{ATOM}}}title", type="text").text = "Queues"
    ElementTree.SubElement(feed, f"{{{ATOM}}}id").text = f"{base}/$Resources/queues"
    ElementTree.SubElement(feed, f"{{{ATOM}}}updated").text = datetime.datetime.now(
        datetime.timezone.utc
    ).isoformat()
    ElementTree.SubElement(feed, f"{{{ATOM}}}link", rel="self", href=f"{base}/$Resources/queues")
    for queue in queues:
        feed.append(entry_xml(base, queue))
    return feed


def parse_description(body: bytes) -> dict[str, str]:
    """The ``QueueDescription`` fields of a PUT body, by local name."""
    root = ElementTree.fromstring(body)
    desc = next((e for e in root.iter() if e.tag.endswith("}QueueDescription")), None)
    if desc is None:
        raise ValueError("no QueueDescription in the request")
    return {child.tag.rpartition("}")[2]: (child.text or "") for child in desc}


# -- HTTP ------------------------------------------------------------------------------------
class AdminRequestHandler(BaseHTTPRequestHandler):
    """One HTTPS connection of an administration client.

    ``server`` is the stand-in: it offers ``check_admin_token(token, audience)``,
    ``admin_get(name)``, ``admin_put(name, fields, update)`` and ``admin_list()``, each
    run on the reactor thread.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("admin %s", format % args)

    def _base(self) -> str:
        return f"https://{self.headers.get('Host', 'localhost')}"

    def _entity(self) -> str:
        return unquote(urlsplit(self.path).path).strip("/")

    def _authorized(self) -> bool:
        token = self.headers.get("Authorization", "")
        if self.server.check_admin_token(token, f"{self._base()}/{self._entity()}"):
            return True
        self._reply(401, None)
        return False

    def _reply(self, status: int, element: ElementTree.Element | None) -> None:
        body = b"" if element is None else ElementTree.tostring(element, xml_declaration=True)
        self.send_response(status)
        self.send_header("Content-Type", "application/atom+xml;type=entry;charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if not self._authorized():
            return
        name = self._entity()
        if name.lower() == "$resources/queues":
            self._reply(200, feed_xml(self._base(), self.server.admin_list()))
            return
        queue = self.server.admin_get(name)
        if queue is None:  # the service answers an empty feed, not 404
            self._reply(200, feed_xml(self._base(), []))
            return
        self._reply(200, entry_xml(self._base(), queue))

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if not self._authorized():
            return
        try:
            fields = parse_description(body)
        except (ValueError, ElementTree.ParseError):
            self._reply(400, None)
            return
        status, queue = self.server.admin_put(
            self._entity(), fields, update=self.headers.get("If-Match") == "*"
        )
        self._reply(status, None if queue is None else entry_xml(self._base(), queue))


def serve_https(server: Any, sock: socket.socket, cert_path: str, key_path: str) -> None:
    """Serve one administration connection: TLS, then HTTP/1.1 requests until it closes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    sock.setblocking(True)
    sock.settimeout(30)
    try:
        with context.wrap_socket(sock, server_side=True) as tls:
            AdminRequestHandler(tls, tls.getpeername(), server)
    except (OSError, ssl.SSLError) as exc:  # a client that gave up, or did not trust us
        log.debug("administration connection ended: %s", exc)
    finally:
        sock.close()


def settings_of(fields: dict[str, str], default_lock: float, default_deliveries: int) -> dict:
    """Lock duration, max delivery count and sessions named in a ``QueueDescription``."""
    lock = fields.get("LockDuration")
    deliveries = fields.get("MaxDeliveryCount")
    return {
        "lock_duration": (isodate.parse_duration(lock).total_seconds() if lock else default_lock),
        "max_delivery_count": int(deliveries) if deliveries else default_deliveries,
        "requires_session": fields.get("RequiresSession", "false").lower() == "true",
    }
