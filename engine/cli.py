"""``rtbatch engine`` / ``python -m realtime_batch.engine``: run one engine until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import Any

import click

from ..control import CONTROL_QUEUE
from ..transport.base import DEFAULT_LOCK_DURATION, DEFAULT_MAX_DELIVERY_COUNT
from ..transport.zeromq.cli_options import curve_key_options
from ._output import DEFAULT_MAX_OUTPUT
from ._supervise import DEFAULT_GRACE, DEFAULT_PREFETCH, DEFAULT_RESULT_TTL, DEFAULT_RETRY_BACKOFF

__all__ = ["configure_logging", "engine"]

logger = logging.getLogger(__name__)

READY_LINE = "ENGINE READY"


class _Size(click.ParamType):
    """A byte size such as 512m, 16M or 2g."""

    name = "size"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        from .tasks import parse_size

        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def configure_logging(
    log_level: str | None, log_file: str | None = None, max_bytes: int = 10 << 20, backups: int = 5
) -> None:
    """Set up the engine's logging: stderr, or ``log_file`` rotated at ``max_bytes``.

    With ``log_file`` the engine's records go only to that file, which
    ``RotatingFileHandler`` renames to ``FILE.1`` (... ``FILE.<backups>``) when it
    reaches ``max_bytes``; what task code prints is bounded per task by the worker.
    """
    name = (log_level or os.environ.get("RTBATCH_LOG_LEVEL") or "INFO").upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        level = logging.INFO
    root = logging.getLogger()
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if log_file is not None:
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter(fmt))
        for old in list(root.handlers):
            if isinstance(old, logging.StreamHandler) and not isinstance(old, logging.FileHandler):
                root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(level)
    elif not root.handlers:
        logging.basicConfig(level=level, stream=sys.stderr, format=fmt)
    elif log_level:
        root.setLevel(level)
    else:  # configured by ``rtbatch -v``: an engine logs at least its INFO lines
        root.setLevel(min(root.level, level))


def _refuse_worker_mode(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Refuse the removed ``--worker-mode`` with the reason rather than "no such option"."""
    if value is not None:
        from .errors import WORKER_MODE_REMOVED

        raise click.UsageError(f"--worker-mode: {WORKER_MODE_REMOVED}", ctx)


@click.command("engine", context_settings={"show_default": True})
@click.option(
    "--transport",
    "transport_url",
    default=None,
    help="Transport URL without a secret, e.g. zmq://127.0.0.1:5555. A credential "
    "(connection string with a key, URL with a password) goes in --transport-file or "
    "env RTBATCH_TRANSPORT instead.",
)
@click.option(
    "--transport-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="File holding the transport URL or connection string (mode 0600; - reads stdin).",
)
@click.option(
    "--pass-env",
    "pass_env",
    multiple=True,
    metavar="NAME",
    help="Give task processes this environment variable too (repeatable; names that look "
    "like credentials are refused). See docs/engine.md for the default allowlist.",
)
@click.option(
    "--queue",
    default=None,
    help="Task queue to pull from (declared if missing). Default: transport.queue of "
    "rtbatch.toml / RTBATCH_TRANSPORT_QUEUE, else 'tasks'.",
)
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
    default=DEFAULT_PREFETCH,
    help="Deliveries held at once (one running, the rest leased and waiting).",
)
@click.option("--engine-id", default=None, help="Id carried in results. Default: HOSTNAME-PID.")
@click.option(
    "--lock-duration",
    type=float,
    default=DEFAULT_LOCK_DURATION,
    envvar="RTBATCH_LOCK_DURATION",
    help="Lease in seconds of the task queue: the queue's setting (it is renewed well "
    "before), and what the engine creates it with.",
)
@click.option(
    "--max-delivery-count",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_DELIVERY_COUNT,
    envvar="RTBATCH_MAX_DELIVERY_COUNT",
    help="Deliveries before a task is dead-lettered: the queue's setting (the last delivery "
    "of a crashing task gets an error result), and what the engine creates it with.",
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
    default=DEFAULT_GRACE,
    help="Seconds the running task may take to finish on SIGTERM/SIGINT.",
)
@click.option(
    "--retry-backoff",
    type=click.FloatRange(min=0),
    default=DEFAULT_RETRY_BACKOFF,
    help="Seconds before retrying a retry_on failure (doubles per attempt, jittered).",
)
@click.option(
    "--control-queue",
    default=CONTROL_QUEUE,
    help="Grouped queue of cancel requests; the engine reads the group named by its id.",
)
@click.option(
    "--result-ttl",
    type=click.FloatRange(min=0.001),
    default=DEFAULT_RESULT_TTL,
    envvar="RTBATCH_RESULT_TTL",
    help="Seconds a result waits in a mailbox before it expires (a dead client's results).",
)
@click.option(
    "--worker-mode",
    hidden=True,
    expose_value=False,
    is_eager=True,
    callback=_refuse_worker_mode,
    help="Removed (#17); refused with the reason.",
)
@curve_key_options("engine")
@click.option(
    "--allow-jvm-option",
    "allow_jvm_options",
    multiple=True,
    metavar="PATTERN",
    help="A regular expression (whole option) of a further JVM option that jar tasks may "
    "pass in jvm_args; repeatable. Default: only -Xmx/-Xms/-Xss sizes.",
)
@click.option(
    "--max-jvm-heap",
    type=_Size(),
    default=None,
    help="Largest -Xmx/-Xms a jar task may ask for, e.g. 4g. Default: this machine's memory.",
)
@click.option(
    "--max-output",
    type=_Size(),
    default=f"{DEFAULT_MAX_OUTPUT >> 20}m",
    help="What one task's output may hold: its print output to the log, and a jar's "
    "stdout and stderr each; the rest is dropped with a '[... N bytes dropped]' line.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the engine's log to this file, rotated (default: stderr); its task "
    "worker's log and the tasks' print output go to FILE-worker (e.g. engine-worker.log).",
)
@click.option(
    "--log-max-bytes",
    type=_Size(),
    default="10m",
    help="Size at which --log-file is rotated.",
)
@click.option(
    "--log-backups",
    type=click.IntRange(min=1),
    default=5,
    help="Rotated --log-file copies kept (FILE.1 ... FILE.N).",
)
@click.option(
    "--jvm-host-option",
    "jvm_host_options",
    multiple=True,
    help="An option of the worker's warm JVM host, e.g. --jvm-host-option=-Xmx1g "
    "(repeat for several). Jars run in that JVM; a task never chooses its options.",
)
@click.option(
    "--log-level", default=None, help="Logging level (default: env RTBATCH_LOG_LEVEL or INFO)."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve this engine's Prometheus metrics on http://127.0.0.1:PORT/metrics "
    "(0 picks a free port, logged).",
)
def engine(
    transport_url: str | None,
    transport_file: str | None,
    pass_env: tuple[str, ...],
    queue: str | None,
    tasks_dir: str,
    allow_jvm_options: tuple[str, ...],
    max_jvm_heap: int | None,
    log_file: str | None,
    log_max_bytes: int,
    log_backups: int,
    curve_options: dict[str, str],
    log_level: str | None,
    metrics_port: int | None = None,
    **engine_options: Any,
) -> None:
    """Run an engine that pulls tasks from QUEUE and runs them.

    Prints "ENGINE READY <engine-id>" on stdout once connected and warm; logs go to
    stderr. SIGTERM/SIGINT stop it gracefully (exit code 0).
    """
    from ..transport.errors import TransportError
    from ._output import WorkerLog, worker_log_path
    from ._reach import ServiceGoneError
    from .credentials import check_pass_env, deny_tracing
    from .engine import Engine, EngineError
    from .tasks import JvmOptionPolicy

    try:
        pass_env = check_pass_env(pass_env)
    except EngineError as exc:
        raise click.BadParameter(str(exc), param_hint="--pass-env") from None
    try:
        jvm_options = JvmOptionPolicy(max_jvm_heap, allow_jvm_options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow-jvm-option") from None
    url = _transport_credential(transport_url, transport_file)
    queue = queue or str(_config_value("transport.queue") or "tasks")
    deny_tracing()  # tasks run as this user: keep them out of this process's memory

    configure_logging(log_level, log_file, log_max_bytes, log_backups)
    worker_log = None
    if log_file is not None:
        worker_log = WorkerLog(worker_log_path(log_file), log_max_bytes, log_backups)

    # The main loop, the receiver and the settler threads hand work to each other; a short
    # GIL switch interval keeps one from waiting on another's Python work (5 ms default).
    sys.setswitchinterval(0.0005)

    def announce(eng: Engine) -> None:
        click.echo(f"{READY_LINE} {eng.engine_id}")
        sys.stdout.flush()

    try:
        eng = Engine(
            url,
            queue,
            tasks_dir,
            on_ready=announce,
            pass_env=pass_env,
            jvm_options=jvm_options,
            worker_log=worker_log,
            transport_options=curve_options,
            **engine_options,  # the options named as Engine's keywords
        )
        metrics = None
        if metrics_port is not None:
            from .metrics import serve_engine_metrics

            try:
                metrics, _thread = serve_engine_metrics(eng, metrics_port)
            except OSError as exc:
                raise click.ClickException(
                    f"cannot serve metrics on port {metrics_port}: {exc.strerror}"
                ) from exc
        try:
            eng.run()
        finally:
            if metrics is not None:
                metrics.shutdown()
    except ServiceGoneError:
        raise SystemExit(1) from None  # the engine's log said why, in one line
    except (EngineError, TransportError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


def _transport_credential(transport_url: str | None, transport_file: str | None) -> str:
    """The transport URL: ``--transport``, ``--transport-file``, ``RTBATCH_TRANSPORT``, config.

    The variables of ``CREDENTIAL_ENV`` are removed from the environment in every case,
    so no worker or JVM inherits them. A secret on the command line is refused.
    """
    from ..config import contains_secret
    from .credentials import (
        CREDENTIAL_ENV,
        CredentialError,
        forget_environment_variables,
        read_credential_file,
    )

    from_env = forget_environment_variables(CREDENTIAL_ENV).get("RTBATCH_TRANSPORT")
    if transport_url is not None and transport_file is not None:
        raise click.UsageError("give --transport or --transport-file, not both")
    if transport_url is not None:
        if contains_secret(transport_url):
            raise click.BadParameter(
                "this URL carries a secret (a key, a SAS signature or a password), and a "
                "command line is readable by every user of the machine: put it in a file "
                "of mode 0600 given with --transport-file, or in env RTBATCH_TRANSPORT",
                param_hint="--transport",
            )
        return transport_url
    if transport_file is not None:
        try:
            return read_credential_file(transport_file)
        except CredentialError as exc:
            raise click.ClickException(f"CredentialError: {exc}") from None
    if from_env:
        return from_env
    configured = _config_value("transport.engine_url") or _config_value("transport.url")
    if configured and not str(configured).rstrip("/").endswith(":0"):
        return str(configured)
    raise click.UsageError(
        "no transport: give --transport URL (no secret), --transport-file PATH, "
        "env RTBATCH_TRANSPORT, or transport.url in rtbatch.toml (not port 0: an engine "
        "connects to a broker that runs already)"
    )


def _config_value(key: str) -> object:
    """A setting of rtbatch.toml (``RTBATCH_CONFIG``) and its ``RTBATCH_*`` overrides."""
    from ..config import Config, ConfigError

    try:
        return Config.load()[key]
    except ConfigError as exc:
        raise click.ClickException(f"ConfigError: {exc}") from None
