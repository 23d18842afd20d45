"""The dashboard's sampler thread and HTTP server (stdlib ``http.server``)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import attrs
import click
import orjson

from ..dlq_cli import _describe, dead_letters
from ..status import Connection, queue_rates, transport_options
from ..transport import Transport, TransportError
from ..transport.stats import TransportStats

__all__ = ["DashboardServer", "Sampler", "dashboard"]

logger = logging.getLogger(__name__)

#: Samples kept for the charts (one a second: ten minutes).
HISTORY = 600
_DEAD_LETTER_INTERVAL = 10.0  # seconds between looks at the dead-letter queues
_DEAD_LETTERS_SHOWN = 10
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}


class Sampler:
    """Takes ``stats()`` every ``interval`` seconds and keeps what the page shows.

    Args:
        transport: an open transport (not closed by the sampler).
        interval: seconds between samples.
    """

    def __init__(self, transport: Transport, interval: float = 1.0) -> None:
        self.transport = transport
        self.interval = interval
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.latest: TransportStats | None = None
        self.error: str | None = None
        self.dead_letters: dict[str, list[dict[str, Any]]] = {}
        self._next_dead_letters = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dashboard-sampler", daemon=True)

    def start(self) -> Sampler:
        """Take a first sample now, then sample in the background."""
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (waits for the thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Take one snapshot; a failure is kept as ``error`` and shown on the page."""
        try:
            stats = self.transport.stats()
        except TransportError as exc:
            with self._lock:
                self.error = f"{type(exc).__name__}: {exc}"
            return
        previous = self.latest
        rates = queue_rates(stats, previous) if previous is not None else {}
        point = {
            "t": stats.taken_at,
            "queues": {
                q.name: {
                    "depth": q.depth,
                    "sent": rates[q.name].sent if q.name in rates else None,
                    "done": rates[q.name].completed if q.name in rates else None,
                    "latency": rates[q.name].latency if q.name in rates else None,
                }
                for q in stats.queues
            },
        }
        dead = self._read_dead_letters(stats)
        with self._lock:
            self.latest = stats
            self.error = None
            self.history.append(point)
            if dead is not None:
                self.dead_letters = dead

    def _read_dead_letters(self, stats: TransportStats) -> dict[str, list[dict[str, Any]]] | None:
        """The newest dead letters of each queue that has some, every ten seconds."""
        now = time.monotonic()
        if now < self._next_dead_letters:
            return None
        self._next_dead_letters = now + _DEAD_LETTER_INTERVAL
        found: dict[str, list[dict[str, Any]]] = {}
        for queue in stats.queues:
            if not queue.dead_letter:
                continue
            try:  # leased for a moment and given back: they stay dead letters
                with dead_letters(self.transport, queue.name, _DEAD_LETTERS_SHOWN, 0.2) as leased:
                    found[queue.name] = [_describe(d) for d in leased]
            except TransportError as exc:
                logger.info("cannot read the dead letters of %r: %s", queue.name, exc)
        return found

    def view(self) -> dict[str, Any]:
        """The JSON document of ``/api/status``."""
        with self._lock:
            stats = self.latest
            return {
                "stats": None if stats is None else stats.to_dict(),
                "history": list(self.history),
                "failures": [] if stats is None else [attrs.asdict(f) for f in stats.failures()],
                "dead_letters": self.dead_letters,
                "error": self.error,
            }


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/api/status":
            self._send(HTTPStatus.OK, orjson.dumps(self.server.sampler.view()),
                       "application/json")  # fmt: skip
            return
        asset = _ASSETS.get(path)
        if asset is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        name, content_type = asset
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, body, content_type)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'self'")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("dashboard: " + format, *args)


class DashboardServer(ThreadingHTTPServer):
    """The dashboard's HTTP server (loopback by default).

    Args:
        sampler: where the page's data comes from.
        host: address to bind.
        port: port to bind (0 picks a free one; see ``port`` afterwards).
    """

    daemon_threads = True

    def __init__(self, sampler: Sampler, host: str = "127.0.0.1", port: int = 8265) -> None:
        self.sampler = sampler
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server_address[1]

    @property
    def url(self) -> str:
        """The page's address."""
        host = self.server_address[0]
        return f"http://{host}:{self.port}/"


@click.command("dashboard")
@transport_options
@click.option("--port", type=click.IntRange(0, 65535), default=8265, show_default=True,
              help="Port to serve on (0: any free port).")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the page has no login, so keep it on loopback.")  # fmt: skip
def dashboard(connection: Connection, port: int, host: str) -> None:
    """Serve a web page of engines, queues, throughput, latency and failures (Ctrl-C stops)."""
    transport = connection.open()
    sampler = Sampler(transport)
    try:
        sampler.start()
        if sampler.error is not None:
            raise click.ClickException(sampler.error)
        try:
            server = DashboardServer(sampler, host, port)
        except OSError as exc:
            raise click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror}") from exc
        click.echo(f"dashboard on {server.url} (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        sampler.stop()
        transport.close()
