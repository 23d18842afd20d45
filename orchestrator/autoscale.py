"""The autoscale controller of an Azure Batch pool: nodes follow the task queue.

A Batch autoscale formula cannot do this job: engines are tasks that never end, so
``$PendingTasks`` says nothing about the work waiting, and nothing would start
engines on nodes that join. The controller reads the queue instead (Service Bus
``get_queue_runtime_properties``, the ZeroMQ broker's queue counts), sizes the
pool from it, keeps one engine per slot on every node (engines on new nodes,
none on leaving ones: :meth:`AzureBatchPool.resize_nodes` drains those first) and
shrinks only after the queue has been idle for a while.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ..transport.base import QueueCounts
from .pool import OrchestratorError

if TYPE_CHECKING:
    from .azure_batch import AzureBatchPool

__all__ = ["AutoscalePolicy", "Autoscaler", "wanted_nodes"]

logger = logging.getLogger(__name__)


def _check_policy(policy: AutoscalePolicy) -> None:
    if not 0 <= policy.min_nodes <= policy.max_nodes:
        raise OrchestratorError(
            f"autoscale needs 0 <= min <= max nodes, not {policy.min_nodes}..{policy.max_nodes}"
        )
    if policy.tasks_per_engine <= 0 or policy.idle_after < 0 or policy.interval <= 0:
        raise OrchestratorError(
            "autoscale needs tasks_per_engine > 0, idle_after >= 0 and interval > 0"
        )


@attrs.frozen
class AutoscalePolicy:
    """How the controller sizes the pool.

    Attributes:
        min_nodes / max_nodes: bounds of the node count (``min_nodes=0``: no node,
            no cost, while idle).
        tasks_per_engine: queued or running tasks one engine should have; fewer
            means more nodes for the same queue.
        idle_after: seconds the queue must have been empty (nothing waiting, nothing
            leased) before the pool shrinks.
        interval: seconds between two looks at the queue.
        spot: add spot nodes instead of dedicated ones.
    """

    min_nodes: int = 0
    max_nodes: int = 1
    tasks_per_engine: float = 1.0
    idle_after: float = 600.0
    interval: float = 30.0
    spot: bool = False

    def __attrs_post_init__(self) -> None:
        _check_policy(self)


def wanted_nodes(counts: QueueCounts, slots_per_node: int, policy: AutoscalePolicy) -> int:
    """Nodes for ``counts`` tasks: one engine per ``tasks_per_engine``, within the bounds."""
    engines = math.ceil(counts.total / policy.tasks_per_engine)
    nodes = math.ceil(engines / max(slots_per_node, 1))
    return min(max(nodes, policy.min_nodes), policy.max_nodes)


class Autoscaler:
    """Sizes ``pool`` from its queue, one :meth:`step` per ``policy.interval``.

    Args:
        pool: an attached :class:`AzureBatchPool` (``use_existing`` or ``create``).
        policy: bounds and timings.
        counts: returns the task queue's counts (default: the pool's transport).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        pool: AzureBatchPool,
        policy: AutoscalePolicy,
        counts: Callable[[], QueueCounts],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.counts = counts
        self.clock = clock
        self.last_busy = clock()
        self.stopped = threading.Event()

    def step(self) -> int:
        """Look at the queue once, resize if needed, fill every slot; return the target."""
        counts = self.counts()
        now = self.clock()
        if counts.total:
            self.last_busy = now
        dedicated, spot = self.pool.node_targets()
        current = dedicated + spot
        want = wanted_nodes(counts, self.pool.slots_per_node, self.policy)
        idle = now - self.last_busy >= self.policy.idle_after
        target = want if want > current or (want < current and idle) else current
        target = min(max(target, self.policy.min_nodes), self.policy.max_nodes)
        if target != current:
            logger.info(
                "autoscale: %d task(s) waiting, %d leased: %d -> %d node(s)",
                counts.waiting, counts.leased, current, target,
            )  # fmt: skip
            self.pool.resize_nodes(*self._split(target, dedicated, spot), wait=False)
        if self.pool.job:
            self.pool.ensure_engines()
            self._renew_credentials()
        return target

    def _renew_credentials(self) -> None:
        """Renew the engines' token when it nears its expiry (pools that have one)."""
        renew = getattr(self.pool, "renew_engine_credentials", None)
        if renew is None:
            return
        try:
            if renew():
                logger.info("autoscale: renewed the engines' credentials")
        except OrchestratorError as exc:  # the next round tries again
            logger.warning("autoscale: renewing the engines' credentials failed: %s", exc)

    def _split(self, target: int, dedicated: int, spot: int) -> tuple[int, int]:
        """New nodes of the policy's kind; shrink that kind first."""
        if self.policy.spot:
            spot = max(target - dedicated, 0)
            return min(dedicated, target), spot
        dedicated = max(target - spot, 0)
        return dedicated, min(spot, target)

    def run(self, rounds: int | None = None) -> None:
        """Step every ``interval`` seconds until :meth:`stop` (or ``rounds`` steps)."""
        done = 0
        while not self.stopped.is_set() and (rounds is None or done < rounds):
            self.step()
            done += 1
            if rounds is None or done < rounds:
                self.stopped.wait(self.policy.interval)

    def stop(self) -> None:
        self.stopped.set()
