"""Run the Monte Carlo workflow on a local pool: fan out samples, then one reduce task.

``python examples/workflow/pi_workflow.py [parts] [samples_per_part]``

The reduce task (``combine.py``) is submitted at once with the samples' futures as
its argument; the session sends it when the last sample is done.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import realtime_batch as rb

HERE = Path(__file__).resolve().parent
TASK_FILES = [HERE.parent / "pi" / "pi_task.py", HERE / "combine.py"]

log = logging.getLogger("pi_workflow")


def estimate_pi(session: rb.Session, parts: int, samples: int) -> dict[str, float]:
    """Fan out ``parts`` sampling tasks, reduce them in one task; return its value."""
    samples_done = session.map("pi_task.py", [samples] * parts, range(parts))
    total = session.submit("combine.py", samples_done)
    return total.result(timeout=600)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parts = int(argv[0]) if argv else 20
    samples = int(argv[1]) if len(argv) > 1 else 100_000
    with rb.LocalPool(engines=2, task_files=TASK_FILES) as pool, rb.Session(pool) as session:
        value = estimate_pi(session, parts, samples)
    log.info("pi ~ %.5f from %d samples in %d parts", value["pi"], value["samples"], parts)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
