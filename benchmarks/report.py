"""Reports: ratios of realtime-batch to the floor and the best peer, Markdown, the chart.

Every workload has one headline figure (``HEADLINE``) and a direction: lower is
better for latency, seconds and memory, higher for throughput and efficiency.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmarks import SYSTEMS, WORKLOADS

__all__ = [
    "HEADLINE",
    "PEERS",
    "RTBATCH",
    "add_ratios",
    "markdown_report",
    "ratio_lines",
    "write_chart",
    "write_docs",
]

PEERS = ("ray", "dask", "celery")
RTBATCH = ("rtbatch-memory", "rtbatch-zmq", "rtbatch-servicebus")
#: workload -> (field, unit, higher is better)
HEADLINE: dict[str, tuple[str, str, bool]] = {
    "roundtrip": ("p50_us", "µs p50", False),
    "java-noop": ("p50_us", "µs p50", False),
    "throughput": ("tasks_per_s", "tasks/s", True),
    "sleep-10ms": ("efficiency", "% of ideal", True),
    "payload-1KiB": ("p50_us", "µs p50", False),
    "payload-100KiB": ("p50_us", "µs p50", False),
    "payload-1MiB": ("p50_us", "µs p50", False),
    "payload-10MiB": ("p50_us", "µs p50", False),
    "cold-start": ("seconds", "s", False),
    "idle": ("rss_mb", "MB RSS", False),
    "client-memory": ("rss_mb", "MB growth", False),
    "scale-session-memory": ("rss_beyond_mb", "MB more, 1M vs 1k tasks (quick: 20k)", False),
    "workflow": ("seconds", "s, fan-out 1,000 + reduce (quick: 100)", False),
}
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def _value(record: dict | None, key: str) -> float | None:
    if not record or record.get("status") != "ok":
        return None
    value = record.get(key)
    return value if isinstance(value, int | float) else None


def _index(records: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["system"], r["workload"]): r for r in records}


def add_ratios(records: list[dict]) -> None:
    """Add ``ratio_to_raw``, ``best_peer`` and ``ratio_to_best_peer`` to rtbatch records.

    A ratio is rtbatch's headline figure divided by the other's (so > 1 is slower for a
    latency and faster for a throughput).
    """
    by_key = _index(records)
    for record in records:
        if record["system"] not in RTBATCH or record["workload"] not in HEADLINE:
            continue
        key, _, higher = HEADLINE[record["workload"]]
        mine = _value(record, key)
        if mine is None:
            continue
        raw = _value(by_key.get(("raw-zmq", record["workload"])), key)
        if raw:
            record["ratio_to_raw"] = mine / raw
        peers = {
            p: v
            for p in PEERS
            if (v := _value(by_key.get((p, record["workload"])), key)) is not None
        }
        if peers:
            best = (max if higher else min)(peers, key=peers.__getitem__)
            record["best_peer"] = best
            if peers[best]:
                record["ratio_to_best_peer"] = mine / peers[best]


def _fmt(value: float, workload: str) -> str:
    if workload == "sleep-10ms":
        return f"{value * 100:.1f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def cell(record: dict | None, workload: str) -> str:
    """A table cell: median (min-max), or why there is no figure."""
    if record is None:
        return "-"
    if record.get("status") != "ok":
        return {"n/a": "n/a", "skipped": "skipped"}.get(record["status"], "error")
    key = HEADLINE[workload][0]
    value = _value(record, key)
    if value is None:
        return "-"
    low, high = record.get("spread", {}).get(key, [value, value])
    return f"{_fmt(value, workload)} ({_fmt(low, workload)}-{_fmt(high, workload)})"


def ratio_lines(records: list[dict]) -> list[str]:
    """One line per rtbatch figure: value, ratio to the floor and to the best peer."""
    lines = []
    for record in records:
        if "ratio_to_raw" not in record and "ratio_to_best_peer" not in record:
            continue
        workload = record["workload"]
        key, unit, higher = HEADLINE[workload]
        word = "faster/better" if higher else "lower is better"
        parts = [f"{record['system']:<19} {workload:<15} {_fmt(record[key], workload):>10} {unit}"]
        if "ratio_to_raw" in record:
            parts.append(f"{record['ratio_to_raw']:.2f}x raw-zmq")
        if "ratio_to_best_peer" in record:
            parts.append(f"{record['ratio_to_best_peer']:.2f}x {record['best_peer']}")
        lines.append("  ".join(parts) + f"  ({word} when {'>' if higher else '<'} 1)")
    return lines


def markdown_report(result: dict[str, Any], chart: str | None) -> str:
    """The generated part of docs/benchmarks.md: command, machine, tables, chart."""
    records = result["records"]
    by_key = _index(records)
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in records)]
    machine = result["machine"]
    out = [
        f"Command: `{result['command']}` ({result['mode']} mode, "
        f"{result['elapsed_s'] / 60:.1f} min, finished {result['finished_at']}).",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB, "
        f"{machine['platform']}, Python {machine['python']}; load average "
        f"{machine['load_average']} at the start and {result['load_average_end']} at the end "
        f"(the machine was shared). Commit `{machine.get('git_commit')}`.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(result["versions"].items())) + ".",
        "",
        "Median of " + f"{result['reps']} repetitions, (min-max) in brackets.",
        "",
        "| workload | unit | " + " | ".join(systems) + " |",
        "|---|---|" + "---|" * len(systems),
    ]
    for workload in WORKLOADS:
        if not any((s, workload) in by_key for s in systems):
            continue
        unit = HEADLINE[workload][1]
        cells = [cell(by_key.get((s, workload)), workload) for s in systems]
        out.append(f"| {workload} | {unit} | " + " | ".join(cells) + " |")
    extra = [
        (s, w, by_key[(s, w)].get("p99_us"))
        for w in ("roundtrip",)
        for s in systems
        if (s, w) in by_key and by_key[(s, w)].get("p99_us") is not None
    ]
    if extra:
        out += ["", "Round trip p99 (µs): " + ", ".join(f"{s} {v:,.0f}" for s, _, v in extra) + "."]
    java = [
        (s, by_key[(s, "java-noop")])
        for s in systems
        if (s, "java-noop") in by_key and by_key[(s, "java-noop")].get("status") == "ok"
    ]
    if java:
        out += [
            "",
            "Java no-op against the Python no-op, alternating on the same pool (p50, µs): "
            + ", ".join(
                f"{s} {r['p50_us']:,.0f} vs {r['python_p50_us']:,.0f} ({r['ratio_to_python']:.2f}x)"
                for s, r in java
            )
            + ".",
        ]
    idle_cpu = [
        (s, by_key[(s, "idle")].get("cpu_pct"), by_key[(s, "idle")].get("client_cpu_pct"))
        for s in systems
        if (s, "idle") in by_key and by_key[(s, "idle")].get("status") == "ok"
    ]
    if idle_cpu:
        out += [
            "",
            "Idle CPU, % of one core (worker-side processes / client process): "
            + ", ".join(f"{s} {w or 0:.1f} / {c or 0:.1f}" for s, w, c in idle_cpu)
            + ".",
        ]
    notes = [
        f"- {r['system']} {r['workload']}: {r.get('error') or r.get('note')}"
        for r in records
        if r.get("status") != "ok" or r.get("note")
    ]
    if notes:
        out += ["", "Notes from the run:", "", *notes]
    ratios = ratio_lines(records)
    if ratios:
        out += [
            "",
            "realtime-batch against the floor and the best peer:",
            "",
            "```",
            *ratios,
            "```",
        ]
    if chart:
        out += ["", f"![benchmark chart]({chart})"]
    return "\n".join(out) + "\n"


def write_chart(records: list[dict], path: Path) -> Path:
    """A PNG with one bar panel per workload (median, min-max error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = _index(records)
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in records)]
    workloads = [w for w in WORKLOADS if any((s, w) in by_key for s in systems)]
    cols = 3
    rows = (len(workloads) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, workload in zip(axes.flat, workloads, strict=False):
        key, unit, higher = HEADLINE[workload]
        scale = 100.0 if workload == "sleep-10ms" else 1.0
        names, values, low, high = [], [], [], []
        for system in systems:
            record = by_key.get((system, workload))
            value = _value(record, key)
            if value is None:
                continue
            lo, hi = record.get("spread", {}).get(key, [value, value])
            names.append(system)
            values.append(value * scale)
            low.append((value - lo) * scale)
            high.append((hi - value) * scale)
        x = range(len(names))
        ax.bar(
            x, values, yerr=[low, high], capsize=3, color=[colours(systems.index(n)) for n in names]
        )
        ax.set_xticks(list(x), names, rotation=35, ha="right", fontsize=8)
        arrow = "higher is better" if higher else "lower is better"
        ax.set_title(f"{workload} ({unit}, {arrow})", fontsize=9)
        if (
            key in ("p50_us", "tasks_per_s")
            and values
            and max(values) / max(min(values), 1e-9) > 30
        ):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(workloads) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_docs(
    doc: Path, generated: str, markers: tuple[str, str] = (BEGIN, END), title: str = "Results"
) -> None:
    """Replace the generated block of ``doc`` (between ``markers``), keeping the prose; a
    missing block is added at the end under ``## title``."""
    begin, end = markers
    block = f"{begin}\n{generated}{end}"
    if doc.is_file():
        text = doc.read_text()
        if begin in text and end in text:
            text = re.sub(
                re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S
            )
        else:
            text = text.rstrip() + f"\n\n## {title}\n\n" + block + "\n"
    else:
        text = f"# Benchmarks\n\n## {title}\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
