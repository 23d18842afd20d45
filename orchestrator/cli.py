"""``rtbatch pool|job|logs``: manage Azure Batch pools, their jobs and engine logs.

Settings come from ``rtbatch.toml`` / environment (``rtbatch config show``); options
given here override them for one command.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from realtime_batch.config_cli import config_file_option

__all__ = ["job", "logs", "pool"]

console = Console(stderr=True)
_config_option = config_file_option()


def _load(config_file: Path | None) -> Any:
    from realtime_batch.config import Config, ConfigError

    try:
        return Config.load(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def _azure_pool(
    config_file: Path | None, settings: dict[str, Any] | None = None, **options: Any
) -> Iterator[Any]:
    """An AzureBatchPool from the config (``settings`` override it), with progress."""
    from realtime_batch.config import ConfigError
    from realtime_batch.orchestrator.azure_batch import AzureBatchPool
    from realtime_batch.orchestrator.pool import OrchestratorError

    cfg = _load(config_file)
    for key, value in (settings or {}).items():
        if value is not None and value != ():
            cfg.set(key, list(value) if isinstance(value, tuple) else value, "option")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            pool = AzureBatchPool.from_config(cfg, progress=progress, **options)
        except (ConfigError, OrchestratorError) as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            yield pool
        except OrchestratorError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            pool.close()


# ------------------------------------------------------------------- pool
@click.group()
def pool() -> None:
    """Create, attach to, repurpose, resize and delete Azure Batch pools."""


@pool.command()
@_config_option
@click.option("--id", "pool_id", default=None, help="Pool id (default: [pool] id).")
@click.option("--vm-size", default=None, help="VM size, e.g. Standard_D2s_v5.")
@click.option("--nodes", type=int, default=None, help="Dedicated nodes.")
@click.option("--spot", type=int, default=None, help="Spot (low-priority) nodes.")
@click.option("--engines-per-node", type=int, default=None, help="Engines (task slots) per node.")
@click.option("--task-file", "task_files", multiple=True, type=click.Path(exists=True))
@click.option("--input-file", "input_files", multiple=True, type=click.Path(exists=True))
@click.option("--engines/--no-engines", "start", default=True, help="Start the engines.")
def create(
    config_file: Path | None,
    pool_id: str | None,
    vm_size: str | None,
    nodes: int | None,
    spot: int | None,
    engines_per_node: int | None,
    task_files: tuple[str, ...],
    input_files: tuple[str, ...],
    start: bool,
) -> None:
    """Create a pool, wait for its nodes and start the engines."""
    settings = {
        "pool.id": pool_id,
        "batch.vm_size": vm_size,
        "batch.dedicated_nodes": nodes,
        "batch.spot_nodes": spot,
        "batch.engines_per_node": engines_per_node,
        "pool.task_files": task_files,
        "pool.input_files": input_files,
    }
    with _azure_pool(config_file, settings) as p:
        with console.status(f"staging files and creating pool {p.pool_id}"):
            p.create(wait=False)
        p.wait_ready()
        if start:
            job_id = p.start_engines()
            p.wait_ready()  # every engine running, or the reason why not
            click.echo(f"pool {p.pool_id} ready; engines running under job {job_id}")
        else:
            click.echo(f"pool {p.pool_id} ready")


@pool.command()
@_config_option
@click.argument("pool_id")
def use(config_file: Path | None, pool_id: str) -> None:
    """Attach to an existing pool and record it in the config file."""
    from realtime_batch.config import config_path, update_config_file

    with _azure_pool(config_file) as p:
        p.use_existing(pool_id)
        job_id = p.job
    update_config_file(
        config_path(config_file), {"pool.id": pool_id, "pool.backend": "azure-batch"}
    )
    click.echo(f"using pool {pool_id}" + (f" (job {job_id})" if job_id else " (no engines)"))


@pool.command()
@_config_option
@click.argument("pool_id", required=False)
@click.option("--task-file", "task_files", multiple=True, type=click.Path(exists=True))
@click.option("--input-file", "input_files", multiple=True, type=click.Path(exists=True))
def repurpose(
    config_file: Path | None,
    pool_id: str | None,
    task_files: tuple[str, ...],
    input_files: tuple[str, ...],
) -> None:
    """Stage new task/input files and restart the engines (nodes are kept)."""
    with _azure_pool(config_file) as p:
        p.use_existing(pool_id or p.pool_id)
        tasks = list(task_files) or p.task_files
        inputs = list(input_files) or p.input_files
        with console.status("restaging files and restarting engines"):
            p.repurpose(p.pool_id, task_files=tasks, input_files=inputs)
        click.echo(f"pool {p.pool_id}: engines restarted under job {p.job}")


@pool.command()
@_config_option
@click.option("--engines", type=int, default=None, help="Total engines wanted.")
@click.option("--nodes", type=int, default=None, help="Dedicated nodes.")
@click.option("--spot", type=int, default=0, show_default=True, help="Spot nodes (with --nodes).")
@click.option("--autoscale", "formula", default=None, help="An autoscale formula instead.")
def resize(
    config_file: Path | None,
    engines: int | None,
    nodes: int | None,
    spot: int,
    formula: str | None,
) -> None:
    """Resize the pool (engines follow), or switch it to an autoscale formula."""
    if sum(x is not None for x in (engines, nodes, formula)) != 1:
        raise click.UsageError("give exactly one of --engines, --nodes or --autoscale")
    with _azure_pool(config_file) as p:
        p.use_existing(p.pool_id)
        if formula:
            p.autoscale_formula(formula)
        elif engines is not None:
            p.resize(engines)
        else:
            p.resize_nodes(nodes or 0, spot)
        click.echo(f"pool {p.pool_id}: {p.engines} engine slots")


@pool.command()
@_config_option
@click.option("--min", "min_nodes", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max", "max_nodes", type=click.IntRange(min=0), required=True, help="Most nodes.")
@click.option(
    "--tasks-per-engine", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
    help="Queued or running tasks per engine wanted.",
)  # fmt: skip
@click.option(
    "--idle-after", type=click.FloatRange(min=0), default=600.0, show_default=True,
    help="Seconds of an empty queue before the pool shrinks.",
)  # fmt: skip
@click.option("--interval", type=click.FloatRange(min=1), default=30.0, show_default=True)
@click.option("--spot", is_flag=True, help="Grow with spot nodes.")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Stop after N looks.")
def autoscale(
    config_file: Path | None,
    min_nodes: int,
    max_nodes: int,
    tasks_per_engine: float,
    idle_after: float,
    interval: float,
    spot: bool,
    rounds: int | None,
) -> None:
    """Size the pool from the task queue until Ctrl-C (one engine per slot on every node)."""
    if min_nodes > max_nodes:
        raise click.BadParameter(f"--min {min_nodes} is above --max {max_nodes}")
    with _azure_pool(config_file) as p:
        p.use_existing(p.pool_id)
        click.echo(f"pool {p.pool_id}: autoscaling {min_nodes}..{max_nodes} node(s); Ctrl-C stops")
        try:
            p.autoscale(
                min_nodes, max_nodes, tasks_per_engine=tasks_per_engine, idle_after=idle_after,
                interval=interval, spot=spot, rounds=rounds,
            )  # fmt: skip
        except KeyboardInterrupt:
            pass
        click.echo(f"pool {p.pool_id}: autoscale stopped at {sum(p.node_targets())} node(s)")


@pool.command(name="renew-credentials")
@_config_option
@click.option(
    "--if-due", is_flag=True,
    help="Only when the engines' token expires within [batch] engine_token_renew_hours.",
)  # fmt: skip
def renew_credentials(config_file: Path | None, if_due: bool) -> None:
    """Stage fresh engine credentials and restart the running engines node by node."""
    with _azure_pool(config_file) as p:
        p.use_existing(p.pool_id)
        renewed = p.renew_engine_credentials(force=not if_due)
        expiry = p.engine_credential_expiry()
        until = f"; the engines' token is valid until {expiry:%Y-%m-%d %H:%M} UTC" if expiry else ""
        state = "renewed" if renewed else "not due, left alone"
        click.echo(f"pool {p.pool_id}: engine credentials {state}{until}")


@pool.command()
@_config_option
@click.argument("pool_id", required=False)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(config_file: Path | None, pool_id: str | None, yes: bool) -> None:
    """Delete the pool, its jobs and its staged files (engine logs are kept)."""
    with _azure_pool(config_file) as p:
        target = pool_id or p.pool_id
        if not yes:
            click.confirm(f"delete pool {target} and its jobs?", abort=True)
        p.use_existing(target)
        p.delete()
        click.echo(f"pool {target} is being deleted")


@pool.command(name="list")
@_config_option
def list_pools(config_file: Path | None) -> None:
    """List the realtime-batch pools of the Batch account."""
    with _azure_pool(config_file) as p:
        rows = p.list()
    table = Table("pool", "state", "allocation", "vm size", "dedicated", "spot", "engines/node")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(width=140).print(table)


# -------------------------------------------------------------------- job
@click.group()
def job() -> None:
    """List, restart and delete realtime-batch jobs."""


@job.command(name="list")
@_config_option
@click.option("--all-pools", is_flag=True, help="Jobs of every realtime-batch pool.")
def list_jobs(config_file: Path | None, all_pools: bool) -> None:
    """List our jobs on the configured pool."""
    with _azure_pool(config_file) as p:
        for job_id in p.jobs(all_pools=all_pools):
            click.echo(job_id)


@job.command(name="delete")
@_config_option
@click.argument("job_id", required=False)
@click.option("--all", "delete_all", is_flag=True, help="Delete every job of ours on the pool.")
def delete_job(config_file: Path | None, job_id: str | None, delete_all: bool) -> None:
    """Delete one job (its engines stop) or all of ours."""
    if bool(job_id) == delete_all:
        raise click.UsageError("give a JOB_ID or --all")
    with _azure_pool(config_file) as p:
        if delete_all:
            click.echo(f"deleted {p.delete_jobs()} job(s)")
        else:
            p.delete_job(job_id)
            click.echo(f"deleted job {job_id}")


@job.command()
@_config_option
@click.argument("job_id", required=False)
def restart(config_file: Path | None, job_id: str | None) -> None:
    """Start engines on empty slots and restart engines that exited."""
    with _azure_pool(config_file) as p:
        p.use_existing(p.pool_id)
        added = p.ensure_engines(job_id or p.job)
        click.echo(f"started {len(added)} engine(s)" + (f": {', '.join(added)}" if added else ""))


# ------------------------------------------------------------------- logs
@click.command()
@_config_option
@click.option("--job", "job_id", default=None, help="Only this job's logs.")
@click.option(
    "--dest", type=click.Path(file_okay=False, path_type=Path), default=Path("rtbatch-logs")
)
@click.option(
    "--local",
    is_flag=True,
    help="Print a LocalPool's logs (broker.log, node-*/engine.log) instead of downloading.",
)
@click.option(
    "--pool-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --local: the pool's directory (default: the newest rtbatch-pool-* in the "
    "temp directory).",
)
@click.option("--node", type=click.IntRange(min=0), default=None,
              help="With --local: only node N's engine log.")  # fmt: skip
@click.option("--tail", "tail_lines", type=click.IntRange(min=1), default=None,
              help="With --local: only the last N lines of each log.")  # fmt: skip
def logs(
    config_file: Path | None,
    job_id: str | None,
    dest: Path,
    local: bool,
    pool_dir: Path | None,
    node: int | None,
    tail_lines: int | None,
) -> None:
    """Download engine logs (uploaded to Blob when engines end) into DEST, or with
    --local print those of a LocalPool."""
    if local:
        _local_logs(pool_dir, node, tail_lines)
        return
    if pool_dir is not None or node is not None or tail_lines is not None:
        raise click.UsageError("--pool-dir, --node and --tail go with --local")
    with _azure_pool(config_file) as p:
        paths = p.logs(dest, job=job_id)
    click.echo(f"downloaded {len(paths)} log file(s) into {dest}")
    for path in paths:
        click.echo(f"  {path}")


def _local_logs(pool_dir: Path | None, node: int | None, tail_lines: int | None) -> None:
    from realtime_batch.emulator.logs import latest_pool_dir, pool_log_files, tail
    from realtime_batch.orchestrator.pool import OrchestratorError

    try:
        root = pool_dir if pool_dir is not None else latest_pool_dir()
        files = pool_log_files(root, node)
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    for path in files:
        click.echo(f"==> {path.relative_to(root)} <==")
        for line in tail(path, tail_lines):
            click.echo(line)
