"""Monte Carlo estimate of pi with the staged ``pi.jar`` (built from ``Pi.java``).

A task module in the seed's ``do_action`` style: ``session.submit("pi_jar_task.py",
samples, seed)``. It runs the jar through ``engine.java_runner`` (an argument
list, never a shell) and parses its ``"HITS SAMPLES"`` output. When only
``Pi.java`` was staged, the jar is built next to it on first use.
"""

from __future__ import annotations

from pathlib import Path

JAR = "pi.jar"


def _ensure_jar(tasks_dir: str) -> None:
    jar, source = Path(tasks_dir, JAR), Path(tasks_dir, "Pi.java")
    if not jar.exists() and source.exists():
        from realtime_batch.engine.java import build_jar

        build_jar(source, jar)


def do_action(engine, args):
    """``args`` = ``[samples]`` or ``[samples, seed]``; returns ``({"hits", "samples"}, error)``."""
    if not 1 <= len(args) <= 2:
        return None, f"expected [samples] or [samples, seed], got {args!r}"
    samples = int(args[0])
    seed = args[1] if len(args) == 2 and args[1] is not None else None
    _ensure_jar(engine.tasks_dir)
    jar_args = [samples] if seed is None else [samples, int(seed)]
    output = engine.java_runner(JAR, *jar_args)
    hits, counted = (int(field) for field in output.split())
    return {"hits": hits, "samples": counted}, "no error"
