"""``rtbatch config init|show|set``: write, print and edit ``rtbatch.toml``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from .config import (
    DEFAULTS,
    Config,
    ConfigError,
    config_path,
    read_credentials,
    update_config_file,
    write_config,
)

__all__ = ["config", "config_file_option"]

F = TypeVar("F", bound=Callable[..., Any])


def config_file_option(dest: str = "config_file") -> Callable[[F], F]:
    """The ``--config FILE`` option every command that reads rtbatch.toml takes,
    passed to the command as ``dest`` (a ``Path`` or None)."""
    return click.option(
        "--config",
        dest,
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file (default: $RTBATCH_CONFIG or ./rtbatch.toml).",
    )


_path_option = config_file_option("path")


@click.group()
def config() -> None:
    """Show and edit rtbatch.toml (secrets are redacted on display)."""


@config.command()
@_path_option
@click.option(
    "--backend",
    type=click.Choice(["local", "azure-batch"]),
    default="local",
    show_default=True,
    help="Pool backend.",
)
@click.option("--transport", "transport_url", default=None, help="Transport URL.")
@click.option(
    "--credentials",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The seed's credentials.json: referenced (not copied) as a credentials source.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(
    path: Path | None,
    backend: str,
    transport_url: str | None,
    credentials: Path | None,
    force: bool,
) -> None:
    """Write a new rtbatch.toml."""
    target = config_path(path)
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists: use --force to overwrite, or 'config set'")
    cfg = Config()
    cfg.set("pool.backend", backend, "file")
    if transport_url:
        cfg.set("transport.url", transport_url, "file")
    if credentials:
        read_credentials(credentials)  # fail now on a broken file
        cfg.set("azure.credentials_file", str(credentials.resolve()), "file")
    if backend == "azure-batch":
        for key in ("batch.vm_size", "batch.dedicated_nodes", "batch.engines_per_node"):
            cfg.set(key, cfg[key], "file")  # written out as a starting point
    write_config(cfg, target)
    click.echo(f"wrote {target}")


@config.command()
@_path_option
@click.option("--all", "show_all", is_flag=True, help="Include settings at their default.")
def show(path: Path | None, show_all: bool) -> None:
    """Print the resolved settings and where each comes from."""
    try:
        cfg = Config.load(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    table = Table(title=f"rtbatch configuration ({config_path(path)})")
    for column in ("setting", "value", "source"):
        table.add_column(column)
    for key, value, source in cfg.items(redacted=True):
        if show_all or source != "default":
            table.add_row(key, repr(value) if not isinstance(value, str) else value, source)
    Console(width=160).print(table)


@config.command(name="set")
@_path_option
@click.argument("key")
@click.argument("value")
def set_(path: Path | None, key: str, value: str) -> None:
    """Set KEY (section.name) to VALUE in the config file, keeping the other settings."""
    section, _, name = key.partition(".")
    if name not in DEFAULTS.get(section, {}):
        raise click.BadParameter(f"unknown setting {key!r}", param_hint="KEY")
    target = config_path(path)
    try:
        update_config_file(target, {key: value})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{key} updated in {target}")
