"""``workflow``: fan out N tasks, then one reduce task over their values (issue #20).

Every system gets the whole graph at once: the reduce task is submitted before the
fan-out is done, with the fan-out's futures (or references) as its input, so the
system itself holds it until they are ready (``System.run_workflow``). The figure is
the wall time from the first submission to the reduce task's value, and the tasks per
second that makes (N + 1 tasks).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.systems.base import System
from benchmarks.workloads import Settings, summarise

__all__ = ["FAN_OUT", "WORKLOAD", "workflow"]

WORKLOAD = "workflow"
#: tasks in the fan-out, per mode
FAN_OUT = {"full": 1_000, "quick": 100}


def workflow(system: System, settings: Settings) -> dict[str, Any]:
    """Run the fan-out-then-reduce ``settings.reps`` times; return one record."""
    fan_out = FAN_OUT.get(settings.mode, FAN_OUT["full"])
    expected = sum(range(fan_out))
    samples = []
    for _ in range(settings.reps):
        start = time.perf_counter()
        value = system.run_workflow(fan_out)
        seconds = time.perf_counter() - start
        if value != expected:
            raise AssertionError(f"the reduce returned {value!r}, not {expected}")
        samples.append({"seconds": seconds, "tasks_per_s": (fan_out + 1) / seconds})
    return summarise(system.name, WORKLOAD, samples, n=fan_out)
