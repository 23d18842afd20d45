"""``rtbatch bench``: the side-by-side benchmarks (the same as ``python -m benchmarks``).

The benchmarks live in the source checkout (``benchmarks/`` beside this package), not
in the installed package; this command finds them from an editable install or the
current directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["bench"]


def _load() -> click.Command:
    try:
        from benchmarks.cli import bench as command
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", "benchmarks.cli"):
            raise
        for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
            if (root / "benchmarks" / "cli.py").is_file():
                sys.path.insert(0, str(root))
                from benchmarks.cli import bench as command

                return command
        raise click.ClickException(
            "the benchmarks live in the realtime-batch source checkout (benchmarks/); "
            "run this from a checkout or an editable install"
        ) from exc
    return command


bench = _load()
