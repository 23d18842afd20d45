"""``rtbatch bench``: the side-by-side benchmarks, run as ``python -m benchmarks``.

The benchmarks live in the source checkout (``benchmarks/``), not in the installed
package. This command finds a checkout (the one an editable install points at, else
the current directory) and runs the benchmarks' command there as a child process with
the same arguments (what ``python -m benchmarks`` runs, named ``rtbatch bench`` in its
usage), passing on SIGINT and SIGTERM and returning its exit status. From an installed
package with no checkout around it says so and exits with status 1.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

import click

__all__ = ["bench", "find_checkout"]

log = logging.getLogger(__name__)

_FORWARDED = (signal.SIGINT, signal.SIGTERM)
#: The child's program: ``python -m benchmarks`` under this command's name.
_PROGRAM = "from benchmarks.cli import bench; bench(prog_name='rtbatch bench')"


def _candidates() -> list[Path]:
    """Where a checkout may be: beside this package (editable install), then the cwd."""
    return [Path(__file__).resolve().parent.parent, Path.cwd()]


def find_checkout() -> Path | None:
    """The first candidate directory holding ``benchmarks/cli.py``, or None."""
    for root in _candidates():
        if (root / "benchmarks" / "cli.py").is_file():
            return root
    return None


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-c", _PROGRAM, *args]


def run_in_checkout(root: Path, args: list[str]) -> int:
    """Run the benchmarks with ``args`` in ``root`` (its working directory) and wait.

    SIGINT and SIGTERM received meanwhile are passed to the child (which stops what it
    started and exits with 128 + the signal); this process waits for it either way.
    """
    child = subprocess.Popen(_command(args), cwd=root)

    def forward(signum: int, frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def bench(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Run the side-by-side benchmarks (``python -m benchmarks ARGS`` in the checkout;
    ``rtbatch bench --help`` lists its options)."""
    root = find_checkout()
    if root is None:
        raise click.ClickException(
            "the benchmarks are not part of the installed package: run "
            "`python -m benchmarks` from a realtime-batch source checkout (or run "
            "`rtbatch bench` there, or from an editable install)"
        )
    if "--help" in args or "-h" in args:  # quick, and shown through click's own output
        done = subprocess.run(_command(list(args)), cwd=root, capture_output=True, text=True)
        click.echo(done.stdout, nl=False)
        click.echo(done.stderr, nl=False, err=True)
        ctx.exit(done.returncode)
    log.info("running the benchmarks in %s", root)
    ctx.exit(run_in_checkout(root, list(args)))
