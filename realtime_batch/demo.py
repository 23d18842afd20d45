"""``rtbatch demo``: the pi Monte Carlo example on a local emulated pool.

Uses the Java task (``pi.jar``, built with the JDK at first use) when a JDK is
present and the pure-Python task otherwise, and says which.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import statistics
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["PiEstimate", "demo", "estimate_pi", "pi_example_files"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "pi"


class PiEstimate:
    """Running Monte Carlo estimate of pi from (hits, samples) task results."""

    def __init__(self) -> None:
        self.hits = 0
        self.samples = 0

    def add(self, value: dict) -> None:
        self.hits += int(value["hits"])
        self.samples += int(value["samples"])

    @property
    def value(self) -> float:
        return 4.0 * self.hits / self.samples if self.samples else float("nan")

    @property
    def standard_error(self) -> float:
        if not self.samples:
            return float("nan")
        p = self.hits / self.samples
        return 4.0 * math.sqrt(p * (1.0 - p) / self.samples)


def pi_example_files(use_java: bool, build_dir: Path | None = None) -> tuple[str, list[Path]]:
    """Return (command, task files) for the pi example, building pi.jar if Java is used."""
    if not EXAMPLES.is_dir():
        raise click.ClickException(f"the pi example is not found at {EXAMPLES}")
    if use_java:
        from realtime_batch.engine.java import build_jar

        jar = build_jar(EXAMPLES / "Pi.java", (build_dir or EXAMPLES / "build") / "pi.jar")
        return "pi_jar_task.py", [EXAMPLES / "pi_jar_task.py", Path(jar)]
    return "pi_task.py", [EXAMPLES / "pi_task.py"]


def estimate_pi(session, command: str, tasks: int, samples: int, progress=None) -> PiEstimate:
    """Submit ``tasks`` pi tasks and fold their results as they arrive."""
    estimate = PiEstimate()
    futures = [session.submit(command, samples, seed) for seed in range(1, tasks + 1)]
    for future in session.as_completed(futures):
        estimate.add(future.result())
        if progress is not None:
            progress()
    return estimate


def jdk_available() -> bool:
    return bool(shutil.which("javac") and shutil.which("java") and shutil.which("jar"))


def check_transport_url(url: str) -> None:
    """Refuse a transport URL no backend handles, before anything starts.

    Raises:
        click.BadParameter: one line naming the known schemes.
    """
    from realtime_batch.transport import TransportError, registered_scheme

    try:
        registered_scheme(url)
    except TransportError as exc:
        raise click.BadParameter(str(exc), param_hint="--transport") from None


class Termination:
    """SIGTERM while the demo runs: close the session and pool, then exit 128 + 15.

    The handler never raises into the main thread: an exception raised between a
    lock's acquire and its ``with`` block would leave the lock held, and the exits
    that close the pool would then wait on it forever. It closes the session and the
    pool from a thread of their own; the main thread's waits then end (its futures
    are cancelled, submits refused) and it exits with the signal's code. A signal that
    comes while the pool starts is acted on once it has started.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._closeables: list[Any] = []
        self._lock = threading.Lock()
        self._closing: threading.Thread | None = None

    def __enter__(self) -> Termination:
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._closing is not None:  # the pool's own exit found it closing: wait for it
            self._closing.join(60)
        signal.signal(signal.SIGTERM, self._previous)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def watch(self, *closeables: Any) -> None:
        """Close these (in order) on SIGTERM; now if it already came."""
        with self._lock:
            self._closeables = list(closeables)
        if self.requested:
            self._close_in_background()

    def exit_if_requested(self) -> None:
        """Raise ``SystemExit(128 + signal)`` if SIGTERM came."""
        if self.signum is not None:
            raise SystemExit(128 + self.signum)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            self._close_in_background()

    def _close_in_background(self) -> None:
        with self._lock:
            closeables, self._closeables = self._closeables, []
        if closeables:
            self._closing = threading.Thread(target=_close_all, args=(closeables,), daemon=True)
            self._closing.start()


def _close_all(closeables: list[Any]) -> None:
    for closeable in closeables:
        try:
            closeable.close()
        except Exception:  # the next one must still close
            logging.getLogger(__name__).exception("closing %r on SIGTERM failed", closeable)


def median_ms(values: list[float | None]) -> str:
    """The median of ``values`` (seconds, ``None`` ignored) as milliseconds text."""
    known = [v for v in values if v is not None]
    return f"{statistics.median(known) * 1000:.1f} ms" if known else "n/a"


@click.command()
@click.option(
    "--tasks", default=100, show_default=True, type=click.IntRange(min=1), help="Number of tasks."
)
@click.option(
    "--samples",
    default=200_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Samples per task.",
)
@click.option(
    "--engines",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Engines in the local pool (at least 1: with none, no task would ever run).",
)
@click.option(
    "--transport",
    default="zmq://127.0.0.1:0",
    show_default=True,
    help="Transport URL (zmq://, memory://, or a Service Bus connection string).",
)
@click.option("--python", "force_python", is_flag=True, help="Use the Python task even with a JDK.")
def demo(tasks: int, samples: int, engines: int, transport: str, force_python: bool) -> None:
    """Estimate pi with a Monte Carlo simulation on a local emulated pool."""
    from realtime_batch.emulator import LocalPool
    from realtime_batch.orchestrator.session import Session

    check_transport_url(transport)
    console = Console()
    use_java = jdk_available() and not force_python
    if use_java:
        console.print(
            "JDK found: running the Java task (pi.jar through java_runner, "
            "in each engine's warm JVM host)"
        )
    else:
        reason = "--python given" if force_python else "no JDK found"
        console.print(f"{reason}: running the pure-Python task (pi_task.py)")
    command, files = pi_example_files(use_java)
    shown = transport if not transport.lower().startswith("endpoint=") else "Service Bus"
    console.print(f"starting a local pool: {engines} engines over {shown}")
    started = time.perf_counter()
    with (
        Termination() as termination,
        LocalPool(engines=engines, transport=transport, task_files=files) as pool,
        Session(pool, name="pi-demo") as session,
    ):
        termination.watch(session, pool)
        ready = time.perf_counter()
        columns = (
            TextColumn("[bold]pi tasks"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        try:
            with Progress(*columns, console=console, transient=False) as bar:
                progress_task = bar.add_task("pi", total=tasks)
                estimate = estimate_pi(
                    session, command, tasks, samples, progress=lambda: bar.advance(progress_task)
                )
        except Exception:
            termination.exit_if_requested()  # the session was closed under it: no error
            raise
        termination.exit_if_requested()
        elapsed = time.perf_counter() - ready
        results = session.results()
    used = sorted({r.engine for r in results})
    console.print(
        f"pi ≈ {estimate.value:.6f} ± {estimate.standard_error:.6f} "
        f"(standard error; {estimate.samples:,} samples, |error| = "
        f"{abs(estimate.value - math.pi):.6f})"
    )
    console.print(
        f"{tasks} tasks in {elapsed:.2f} s = {tasks / elapsed:,.0f} tasks/s "
        f"(pool start {ready - started:.2f} s); engines used: {', '.join(used)}"
    )
    run_times = [
        r.finished_at - r.started_at if r.started_at and r.finished_at else None for r in results
    ]
    console.print(
        f"per task, p50: {median_ms(run_times)} running on its engine, "
        f"{median_ms([r.latency for r in results])} from submit to result "
        "(all tasks were submitted at once, so this includes waiting in the queue)"
    )
