"""When a ZeroMQ client sends a heartbeat: the one rule, kept apart from the sockets.

The broker takes any request as a sign of life (``Broker._handle``), and the client
takes any reply as one of the broker. A heartbeat is only needed when the traffic
does not say as much already, so it is sent when

* none was sent yet (the broker learns the client's interval; the client its epoch);
* the engine report riding on heartbeats changed since the last one sent;
* the client sent no request, or heard no reply, for one interval (a dead or
  restarted broker is noticed, and a quiet client stays alive at the broker);
* ``REFRESH_BEATS`` intervals passed since the last one (the broker's engine table
  and the client's view of the broker's epoch stay fresh even on a busy link).

While the client has a long receive parked at the broker (``parked``), the broker
counts that receive as the client's sign of life, so the quiet-link and refresh
beats are not sent; a dropped connection to the broker (``probe``) sends one at
once, and one left unanswered is sent again each interval until the broker
answers, so a dead or restarted broker is still noticed within the liveness time
(the reply carries the broker's epoch: a restarted broker gets the parked receives
again).
An idle engine keeps its receives parked for tens of seconds (a client that holds
leases for 5 s at most: the broker ends its waits then, ``Broker.leased_wait``), so
it sends next to nothing while it idles: with hundreds of engines that is most of
what idle engines cost the broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["REFRESH_BEATS", "HeartbeatSchedule"]

#: Intervals after which a heartbeat goes out even while other traffic flows.
REFRESH_BEATS = 10
_MIN_CHECK = 0.001  # seconds: the soonest next look (a due beat was just sent)


class HeartbeatSchedule:
    """Decides when one client's next heartbeat is due (not thread-safe for writers:
    ``request_sent`` and ``reply_received`` only store a time, which is safe to race).

    Args:
        interval: the client's heartbeat interval in seconds.
        refresh_beats: intervals after which a heartbeat is sent whatever the traffic.
    """

    def __init__(self, interval: float, refresh_beats: int = REFRESH_BEATS) -> None:
        if interval <= 0:
            raise ValueError("the heartbeat interval must be positive")
        if refresh_beats < 1:
            raise ValueError("refresh_beats must be at least 1")
        self.interval = interval
        self.refresh = interval * refresh_beats
        self.last_request = float("-inf")
        self.last_reply = float("-inf")
        self.last_beat = float("-inf")
        #: when the oldest heartbeat sent since the last reply left (None: none owed)
        self.awaiting: float | None = None
        #: long receives waiting at the broker (they show this client alive there)
        self.parked = 0
        #: the connection to the broker dropped: a heartbeat is due at once
        self.probe = False
        self._report_sent: Mapping[str, Any] | None = None

    def request_sent(self, now: float) -> None:
        """A request (of any kind) left for the broker at ``now``."""
        self.last_request = now

    def reply_received(self, now: float) -> None:
        """A reply (of any kind) came from the broker at ``now``."""
        self.last_reply = now
        self.awaiting = None

    def beat_sent(self, now: float, report: Mapping[str, Any] | None) -> None:
        """A heartbeat carrying ``report`` left at ``now``."""
        self.last_beat = self.last_request = now
        self._report_sent = report
        self.probe = False
        if self.awaiting is None:
            self.awaiting = now

    def silent_for(self, now: float) -> float:
        """Seconds the broker has left a heartbeat unanswered (0: it owes none).

        A heartbeat goes out once the link is quiet for an interval, so a dead broker
        shows as silent one interval after its last reply at the latest."""
        awaiting = self.awaiting
        return 0.0 if awaiting is None else now - awaiting

    def due(self, now: float, report: Mapping[str, Any] | None) -> bool:
        """Whether a heartbeat carrying ``report`` should be sent at ``now``."""
        if self.probe or report != self._report_sent or self.last_beat == float("-inf"):
            return True
        if self.awaiting is not None and now - self.last_beat >= self.interval:
            return True  # the last one is unanswered: again each interval, even parked
        if self.parked > 0:
            return False
        if now - self.last_beat >= self.refresh:
            return True
        quiet = now - self.interval
        return self.last_request <= quiet or self.last_reply <= quiet

    def next_check(self, now: float) -> float:
        """When to ask ``due`` again: when the link will have been quiet for an
        interval (one interval after the last heartbeat at the soonest), or the
        refresh falls due, if nothing happens in between. While a receive is parked
        nothing falls due by time alone (``due``): one interval from now, so that a
        report or a parked receive that ended is looked at within an interval."""
        if self.parked > 0:
            at = now + self.interval if self.awaiting is None else self.last_beat + self.interval
            return max(now + _MIN_CHECK, at)
        quiet_until = min(self.last_request, self.last_reply) + self.interval
        at = min(max(quiet_until, self.last_beat + self.interval), self.last_beat + self.refresh)
        return max(now + _MIN_CHECK, at)
