"""The ``bench`` command: ``python -m benchmarks`` and ``rtbatch bench``.

Runs each selected system in its own ``benchmarks.runner`` process (with a time
limit), collects the records, prints the table and realtime-batch's ratios to the
floor and the best peer, and writes the JSON, the chart and ``docs/benchmarks.md``.

SIGTERM or SIGINT (Ctrl-C) stops the running system's process (which stops the
processes it started) and exits with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from benchmarks import ROOT, SYSTEMS, WORKLOADS
from benchmarks.procs import Interrupted, child_env, die_with_parent, interruptible, stop_process
from benchmarks.report import add_ratios, markdown_report, ratio_lines, write_chart
from benchmarks.report import write_docs as write_docs_file
from benchmarks.scale_report import BEGIN as SCALE_BEGIN
from benchmarks.scale_report import END as SCALE_END
from benchmarks.scale_report import scale_markdown, write_scale_chart
from benchmarks.workloads import FULL, QUICK

__all__ = ["bench", "merge_results", "run_benchmarks"]

DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "img" / "benchmarks.png"
SCALE_CHART = ROOT / "docs" / "img" / "scale.png"
NEEDS_EXTRA = {"ray", "dask", "celery"}
#: seconds one system's process may take before it is stopped
TIME_LIMIT = {"quick": 150.0, "full": 1500.0}
#: seconds a system's process has to stop what it started, after SIGTERM, before SIGKILL
STOP_GRACE = 5.0


def _split(value: str | None, allowed: tuple[str, ...], what: str) -> list[str]:
    if not value:
        return list(allowed)
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise click.BadParameter(
            f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})"
        )
    return chosen


def _run_one(system: str, mode: str, workloads: list[str], log: Path) -> tuple[list[dict], dict]:
    """Run one system's process; return its records and versions."""
    argv = [sys.executable, "-m", "benchmarks.runner", system, "--mode", mode]
    argv += ["--workloads", ",".join(workloads)]
    records: list[dict] = []
    versions: dict[str, str] = {}
    with log.open("w") as errors:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=child_env(),
            cwd=ROOT,
            process_group=0,
            preexec_fn=die_with_parent,
        )
        timer = threading.Timer(TIME_LIMIT[mode], _kill_group, (proc.pid,))
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                tag, _, body = line.partition(" ")
                if tag == "RECORD":
                    record = json.loads(body)
                    records.append(record)
                    click.echo(f"  {system:<19} {record['workload']:<15} {_short(record)}")
                elif tag == "VERSIONS":
                    versions = json.loads(body)["versions"]
            code = proc.wait()
        finally:
            timer.cancel()
            # interrupted (or a failure here): the runner stops its system on SIGTERM
            stop_process(proc, STOP_GRACE, group=True)
    done = {r["workload"] for r in records}
    missing = [w for w in workloads if w not in done]
    if missing:
        reason = f"the runner exited with {code} (time limit {TIME_LIMIT[mode]:.0f}s); see {log}"
        records += [
            {"system": system, "workload": w, "status": "error", "error": reason} for w in missing
        ]
        click.echo(f"  {system}: {reason}", err=True)
    return records, versions


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _short(record: dict) -> str:
    if record.get("status") != "ok":
        return f"{record['status']}: {record.get('error', '')[:150]}"
    shown = []
    for key, fmt in (
        ("p50_us", "p50 {:.0f} µs"),
        ("p99_us", "p99 {:.0f} µs"),
        ("tasks_per_s", "{:.0f} tasks/s"),
        ("efficiency", "{:.1%} of ideal"),
        ("seconds", "{:.2f} s"),
        ("rss_mb", "{:.1f} MB"),
        ("cpu_pct", "{:.1f}% CPU"),
    ):
        if isinstance(record.get(key), int | float):
            shown.append(fmt.format(record[key]))
    return ", ".join(shown)


def run_benchmarks(
    *, mode: str, systems: list[str], workloads: list[str], log_dir: Path
) -> dict[str, Any]:
    """Run the selected systems and workloads; return the full result document."""
    from benchmarks.setup_env import machine_facts

    started = time.perf_counter()
    machine = machine_facts()
    records: list[dict] = []
    versions: dict[str, str] = dict(machine["versions"])
    log_dir.mkdir(parents=True, exist_ok=True)
    for system in systems:
        click.echo(f"{system}:")
        system_start = time.perf_counter()
        found, found_versions = _run_one(system, mode, workloads, log_dir / f"{system}.log")
        took = time.perf_counter() - system_start
        click.echo(f"  {system} took {took:.0f} s")
        for record in found:
            record["system_elapsed_s"] = took
        records += found
        versions.update(found_versions)
    add_ratios(records)
    settings = QUICK if mode == "quick" else FULL
    return {
        "mode": mode,
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
        "machine": machine,
        "versions": versions,
        "settings": {k: v for k, v in vars(settings).items()},
        "reps": settings.reps,
        "records": records,
        "elapsed_s": time.perf_counter() - started,
        "finished_at": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }


def merge_results(earlier: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """``earlier`` with the records of the systems in ``now`` replaced (ratios recomputed)."""
    if earlier.get("mode") != now["mode"]:
        raise click.UsageError(f"cannot merge a {now['mode']} run into a {earlier.get('mode')} run")
    rerun = {r["system"] for r in now["records"]}
    records = [
        {k: v for k, v in r.items() if not k.startswith(("ratio_", "best_peer"))}
        for r in earlier["records"]
        if r["system"] not in rerun
    ]
    records += now["records"]
    add_ratios(records)
    merged = dict(earlier)
    merged.update(
        records=records,
        versions={**earlier.get("versions", {}), **now["versions"]},
        command=f"{earlier.get('command')}; then {now['command']}",
        elapsed_s=earlier.get("elapsed_s", 0.0) + now["elapsed_s"],
        finished_at=now["finished_at"],
        load_average_end=now["load_average_end"],
    )
    return merged


@click.command(name="bench")
@click.option("--quick", is_flag=True, help="Small counts, for checking (under 3 minutes).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the records, versions and machine facts here.",
)
@click.option(
    "--scale",
    is_flag=True,
    help="Run the scale family instead (rtbatch-zmq at several sizes; see benchmarks/scale.py).",
)
@click.option("--systems", help=f"Comma-separated subset of: {', '.join(SYSTEMS)}.")
@click.option("--workloads", help=f"Comma-separated subset of: {', '.join(WORKLOADS)}.")
@click.option(
    "--write-docs/--no-docs",
    default=None,
    help="Write docs/benchmarks.md and docs/img/benchmarks.png (default: in full mode).",
)
@click.option(
    "--merge",
    "merge_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Start from this earlier JSON and replace only the systems run now.",
)
@click.option(
    "--install/--no-install",
    default=True,
    help="Install the bench extra when its imports are missing (default: yes).",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(os.environ.get("TMPDIR", "/tmp")) / "rtbatch-bench-logs",
    show_default=True,
    help="Where each system's stderr goes.",
)
def bench(**options: Any) -> None:
    """Run realtime-batch side by side with raw pyzmq, Ray, Dask and Celery."""
    try:
        with interruptible():
            _bench(**options)
    except Interrupted as exc:
        click.echo(f"\n{exc}: stopped the benchmark processes", err=True)
        sys.exit(exc.exit_code)


def _bench(
    quick: bool,
    scale: bool,
    json_path: Path | None,
    systems: str | None,
    workloads: str | None,
    write_docs: bool | None,
    merge_path: Path | None,
    install: bool,
    log_dir: Path,
) -> None:
    if write_docs is None:
        write_docs = not quick
    if write_docs and not install:
        _need_chart_library()
    if scale:
        if install and write_docs:  # the chart needs matplotlib
            from benchmarks.setup_env import ensure_bench_extra

            ensure_bench_extra()
        _scale(quick, json_path, write_docs, log_dir)
        return
    chosen = _split(systems, SYSTEMS, "systems")
    loads = _split(workloads, WORKLOADS, "workloads")
    mode = "quick" if quick else "full"
    if install and (NEEDS_EXTRA & set(chosen) or write_docs):
        from benchmarks.setup_env import ensure_bench_extra

        ensure_bench_extra()
    result = run_benchmarks(mode=mode, systems=chosen, workloads=loads, log_dir=log_dir)
    if merge_path is not None:
        result = merge_results(json.loads(merge_path.read_text()), result)
    ratios = ratio_lines(result["records"])
    if ratios:
        click.echo("\nrealtime-batch against the floor (raw-zmq) and the best peer:")
        for line in ratios:
            click.echo("  " + line)
    click.echo(f"\n{mode} run took {result['elapsed_s']:.0f} s")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
        click.echo(f"wrote {json_path}")
    if write_docs:
        chart = write_chart(result["records"], CHART)
        write_docs_file(DOC, markdown_report(result, os.path.relpath(chart, DOC.parent)))
        click.echo(f"wrote {DOC} and {chart}")
    else:
        click.echo("\n" + markdown_report(result, None))


def _need_chart_library() -> None:
    """Refuse ``--write-docs --no-install`` without matplotlib before anything runs: the
    chart is drawn last, and a run of half an hour would end without its tables."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise click.UsageError(
            "--write-docs draws a chart with matplotlib, which is not installed: drop "
            "--no-install (the bench extra is then installed), or add --no-docs"
        )


def _scale(quick: bool, json_path: Path | None, write_docs: bool, log_dir: Path) -> None:
    """The scale family in its own process; its table (and chart) printed or in the docs."""
    mode = "quick" if quick else "full"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "scale.log"
    argv = [sys.executable, "-m", "benchmarks.scale", "--mode", mode]
    started = time.perf_counter()
    with log.open("w") as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True,
                                env=child_env(), cwd=ROOT, process_group=0,
                                preexec_fn=die_with_parent)  # fmt: skip
        records = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                tag, _, body = line.partition(" ")
                if tag == "RECORD":
                    records.append(json.loads(body))
                    click.echo(f"  {records[-1]['workload']}: {records[-1]['status']}")
            proc.wait()
        finally:
            stop_process(proc, STOP_GRACE, group=True)
    result = {"mode": mode, "elapsed_s": time.perf_counter() - started, "records": records,
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
        click.echo(f"wrote {json_path}")
    note = f"{mode} run of {result['when']}, {result['elapsed_s']:.0f} s; log: {log}"
    if write_docs:
        chart = write_scale_chart(records, SCALE_CHART)
        table = scale_markdown(records, os.path.relpath(chart, DOC.parent), note)
        write_docs_file(DOC, table, (SCALE_BEGIN, SCALE_END), "Scale")
        click.echo(f"wrote {DOC} and {chart}")
    else:
        click.echo("\n" + scale_markdown(records, None, note))
