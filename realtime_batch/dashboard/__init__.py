"""``rtbatch dashboard``: a local web page of queues, engines, throughput, latency and failures.

A ``Sampler`` thread takes ``Transport.stats()`` every second and keeps the
recent history (throughput and latency per queue, from the difference of two
snapshots), the engines' reported failures with their tracebacks, and the
newest dead letters of each queue that has some. A stdlib ``ThreadingHTTPServer``
serves the page and its assets (``static/``, shipped in the package: no CDN) and
``/api/status``, the sampler's latest view as JSON.
"""

from __future__ import annotations

from .server import DashboardServer, Sampler, dashboard

__all__ = ["DashboardServer", "Sampler", "dashboard"]
