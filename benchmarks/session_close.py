"""How long ``Session.close()`` takes with 1,000 tasks pending, per transport.

    python -m benchmarks.session_close [--tasks 1000] [--runs 3]

No engine runs: every task stays pending, so ``close()`` has to stop the sender and
the listener and cancel every future. Service Bus runs on the AMQP stand-in
(``tests/servicebus_standin.py``), ZeroMQ on a broker process, memory in process.
Figures are wall seconds of ``close()`` alone, side by side; the machine is shared and
noisy, so compare within one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid

from benchmarks import ROOT

sys.path.insert(0, str(ROOT / "tests"))

__all__ = ["close_seconds", "main"]


def close_seconds(url: str, tasks: int) -> float:
    """Open a session on ``url``, submit ``tasks`` tasks, time ``close()``."""
    from realtime_batch.orchestrator.session import Session

    session = Session(
        url, job=f"close-{uuid.uuid4().hex[:6]}", task_queue=f"q{uuid.uuid4().hex[:8]}"
    )
    futures = [session.submit("noop.py") for _ in range(tasks)]
    time.sleep(1.0)  # let the sender drain its outbox
    started = time.perf_counter()
    session.close()
    took = time.perf_counter() - started
    assert all(f.cancelled() for f in futures)
    return took


def _zmq_broker() -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "realtime_batch.transport.zeromq", "--bind", "tcp://127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    return proc, "zmq://" + line.split()[1].removeprefix("tcp://")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    from servicebus_standin import StandInProcess

    standin = StandInProcess()
    broker, zmq_url = _zmq_broker()
    try:
        urls = {
            "memory": f"memory://close-{uuid.uuid4().hex}",
            "zmq": zmq_url,
            "servicebus": standin.connection_string,
        }
        print(f"Session.close() with {args.tasks} tasks pending, seconds per run")
        for name, url in urls.items():
            runs = [close_seconds(url, args.tasks) for _ in range(args.runs)]
            print(f"  {name:<11}" + "  ".join(f"{r:6.3f}" for r in runs))
    finally:
        standin.stop()
        broker.terminate()
        broker.wait(10)


if __name__ == "__main__":
    main()
