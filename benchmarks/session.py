"""Session + LocalPool(engines=2) over ``zmq://`` against the raw pyzmq floor, in one run.

The issue-5 benchmark: a no-op task's round trip (p50/p99) through ``Session`` and a
two-engine ``LocalPool``, the throughput of 20,000 no-op tasks submitted at once, and
the wall time of 2,000 tasks of 10 ms against the ideal (2,000 x 10 ms / 2 engines =
10 s), beside the raw pyzmq brokered round trip (client -> broker -> worker -> broker
-> client). It is the side-by-side harness (``python -m benchmarks``) restricted to
those two systems and workloads::

    python -m benchmarks.session [--quick] [--json PATH]
"""

from __future__ import annotations

import sys

from benchmarks.cli import bench


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    bench.main(
        [
            "--systems",
            "raw-zmq,rtbatch-zmq",
            "--workloads",
            "roundtrip,throughput,sleep-10ms",
            "--no-docs",
            "--no-install",
            *args,
        ],
        prog_name="python -m benchmarks.session",
    )


if __name__ == "__main__":
    main()
