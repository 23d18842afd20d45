"""The ``rtbatch`` command line.

Sub-commands live next to the code they drive and are imported only when used
(a lazy click group), so ``rtbatch engine`` starts without loading the Azure SDKs.
"""

from __future__ import annotations

import importlib
import os

import click

__all__ = ["main"]

#: command name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "broker": "realtime_batch.transport.zeromq.cli:broker",
    "engine": "realtime_batch.engine.cli:engine",
    "demo": "realtime_batch.demo:demo",
    "servicebus": "realtime_batch.transport.servicebus_cli:servicebus",
    "pool": "realtime_batch.orchestrator.cli:pool",
    "job": "realtime_batch.orchestrator.cli:job",
    "logs": "realtime_batch.orchestrator.cli:logs",
    "config": "realtime_batch.config_cli:config",
    "dlq": "realtime_batch.dlq_cli:dlq",
    "keys": "realtime_batch.transport.zeromq.cli:keys",
    "bench": "realtime_batch.bench_cli:bench",
    "status": "realtime_batch.status:status",
    "top": "realtime_batch.status:top",
    "dashboard": "realtime_batch.dashboard:dashboard",
}

_HELP: dict[str, str] = {
    "broker": "Run the ZeroMQ broker.",
    "engine": "Run an engine that pulls and runs tasks.",
    "demo": "Run the pi Monte Carlo demo on a local emulated pool.",
    "servicebus": "Provision Service Bus entities.",
    "pool": "Manage Azure Batch pools.",
    "job": "Manage Azure Batch jobs.",
    "logs": "Download engine logs from Blob storage.",
    "config": "Show and edit rtbatch.toml.",
    "dlq": "Inspect, replay and purge dead-lettered tasks.",
    "keys": "Generate CURVE key pairs for the ZeroMQ broker.",
    "bench": "Run the side-by-side benchmarks.",
    "status": "Show queues, engines and mailboxes of a transport.",
    "top": "Show queues and engines live in the terminal.",
    "dashboard": "Serve a local web dashboard of queues, engines and failures.",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise click.UsageError(f"'{cmd_name}' is not available in this build") from exc
            raise
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="realtime-batch")
def main(verbose: int) -> None:
    """realtime-batch: interactive tasks on Azure Batch pools and a local emulator."""
    import logging  # here: ``rtbatch --help`` never needs it

    level = os.environ.get("RTBATCH_LOG_LEVEL") or ["WARNING", "INFO", "DEBUG"][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
