"""``rtbatch engine`` / ``python -m realtime_batch.engine``: run one engine until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import sys

import click

from ..transport.base import DEFAULT_LOCK_DURATION, DEFAULT_MAX_DELIVERY_COUNT
from ..transport.zeromq.cli import curve_key_options
from . import WORKER_MODES

__all__ = ["engine"]

logger = logging.getLogger(__name__)

READY_LINE = "ENGINE READY"


@click.command("engine")
@click.option(
    "--transport",
    "transport_url",
    required=True,
    envvar="RTBATCH_TRANSPORT",
    help="Transport URL, e.g. zmq://127.0.0.1:5555 (env RTBATCH_TRANSPORT).",
)
@click.option("--queue", required=True, help="Task queue to pull from (declared if missing).")
@click.option(
    "--tasks-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Directory holding the task modules and jars that commands name.",
)
@click.option(
    "--work-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Current directory of task code (input files). Default: the cwd.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Deliveries held at once (one running, the rest leased and waiting).",
)
@click.option("--engine-id", default=None, help="Id carried in results. Default: HOSTNAME-PID.")
@click.option(
    "--lock-duration",
    type=float,
    default=DEFAULT_LOCK_DURATION,
    show_default=True,
    help="Lease in seconds of the task queue, when this engine creates it.",
)
@click.option(
    "--max-delivery-count",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_DELIVERY_COUNT,
    show_default=True,
    help="Deliveries before a task is dead-lettered, when this engine creates the queue.",
)
@click.option(
    "--default-timeout",
    type=float,
    default=None,
    help="Seconds a task may run when it sets no timeout. Default: no limit.",
)
@click.option(
    "--grace",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds the running task may take to finish on SIGTERM/SIGINT.",
)
@click.option(
    "--retry-backoff",
    type=click.FloatRange(min=0),
    default=0.1,
    show_default=True,
    help="Seconds before retrying a retry_on failure (doubles per attempt, jittered).",
)
@click.option(
    "--control-queue",
    default="control",
    show_default=True,
    help="Grouped queue of cancel requests; the engine reads the group named by its id.",
)
@click.option(
    "--result-ttl",
    type=click.FloatRange(min=0.001),
    default=86400.0,
    show_default=True,
    envvar="RTBATCH_RESULT_TTL",
    help="Seconds a result waits in a mailbox before it expires (a dead client's results).",
)
@click.option(
    "--worker-mode",
    type=click.Choice(list(WORKER_MODES)),
    default="auto",
    show_default=True,
    help="direct: the task worker takes tasks from the broker and answers them itself "
    "(zmq:// only; the shorter path); relay: the engine passes each task to it; "
    "auto: direct on zmq://, relay otherwise.",
)
@curve_key_options("engine")
@click.option(
    "--log-level", default=None, help="Logging level (default: env RTBATCH_LOG_LEVEL or INFO)."
)
def engine(
    transport_url: str,
    queue: str,
    tasks_dir: str,
    work_dir: str | None,
    prefetch: int,
    engine_id: str | None,
    lock_duration: float,
    max_delivery_count: int,
    default_timeout: float | None,
    grace: float,
    retry_backoff: float,
    control_queue: str,
    result_ttl: float,
    worker_mode: str,
    curve_options: dict[str, str],
    log_level: str | None,
) -> None:
    """Run an engine that pulls tasks from QUEUE and runs them.

    Prints "ENGINE READY <engine-id>" on stdout once connected and warm; logs go to
    stderr. SIGTERM/SIGINT stop it gracefully (exit code 0).
    """
    from ..transport.errors import TransportError
    from .engine import Engine, EngineError

    name = (log_level or os.environ.get("RTBATCH_LOG_LEVEL") or "INFO").upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        level = logging.INFO
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    elif log_level:
        root.setLevel(level)
    else:  # configured by ``rtbatch -v``: an engine logs at least its INFO lines
        root.setLevel(min(root.level, level))

    # The main loop, the receiver and the settler threads hand work to each other; a short
    # GIL switch interval keeps one from waiting on another's Python work (5 ms default).
    sys.setswitchinterval(0.0005)

    def announce(eng: Engine) -> None:
        click.echo(f"{READY_LINE} {eng.engine_id}")
        sys.stdout.flush()

    try:
        eng = Engine(
            transport_url,
            queue,
            tasks_dir,
            work_dir=work_dir,
            prefetch=prefetch,
            engine_id=engine_id,
            default_timeout=default_timeout,
            lock_duration=lock_duration,
            max_delivery_count=max_delivery_count,
            grace=grace,
            on_ready=announce,
            retry_backoff=retry_backoff,
            control_queue=control_queue,
            result_ttl=result_ttl,
            direct=WORKER_MODES[worker_mode],
            transport_options=curve_options,
        )
        eng.run()
    except (EngineError, TransportError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
