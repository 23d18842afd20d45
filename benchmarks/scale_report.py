"""The ``scale`` family's table and chart (``python -m benchmarks --scale``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["BEGIN", "END", "scale_markdown", "write_scale_chart"]

BEGIN = "<!-- scale:begin -->"
END = "<!-- scale:end -->"

#: workload -> [(figure, label, format)], one table row per size and figure
ROWS: dict[str, list[tuple[str, str, str]]] = {
    "scale-engines": [
        ("tasks_per_s", "no-op tasks/s", "{:,.0f}"),
        ("cpu_us_per_task", "CPU µs per no-op task (whole tree)", "{:,.0f}"),
        ("efficiency", "10 ms tasks, % of ideal", "{:.1f}"),
        ("tasks_per_engine", "10 ms tasks per engine (min-max; fair share)", "spread"),
        ("sleep_cpu_us_per_task", "CPU µs per 10 ms task (whole tree)", "{:,.0f}"),
        ("sleep_cores_busy", "cores busy while 10 ms tasks run (whole tree)", "{:.2f}"),
        ("long_efficiency", "100 ms tasks, % of ideal (largest pool only)", "{:.1f}"),
        ("pool_start_s", "pool start, s", "{:.2f}"),
        ("start_cpu_s_per_engine", "CPU s per engine start (engine + its worker)", "{:.2f}"),
    ],
    "scale-sessions": [
        ("tasks_per_s", "aggregate no-op tasks/s", "{:,.0f}"),
        ("client_cpu_us_per_task", "client CPU µs per task", "{:,.0f}"),
    ],
    "scale-queued": [
        ("broker_bytes_per_task", "broker bytes per queued task", "{:,.0f}"),
        ("submit_per_s", "submit, tasks/s", "{:,.0f}"),
        ("drain_per_s", "drain by 8 engines, tasks/s", "{:,.0f}"),
    ],
    "scale-idle": [
        ("broker_cpu_pct", "broker CPU, % of a core", "{:.2f}"),
        ("receives_per_s", "idle receives answered per s", "{:,.0f}"),
    ],
    "scale-idle-pool": [
        ("engine_cpu_pct", "CPU per idle engine, % of a core", "{:.2f}"),
        ("worker_cpu_pct", "CPU per idle worker, % of a core", "{:.2f}"),
        ("broker_cpu_pct", "broker CPU, % of a core", "{:.2f}"),
        ("client_cpu_pct", "client CPU (one session), % of a core", "{:.2f}"),
    ],
}
WHAT = {
    "scale-engines": "engines",
    "scale-sessions": "sessions",
    "scale-queued": "queued tasks",
    "scale-idle": "simulated idle engines",
    "scale-idle-pool": "idle engines",
}


def _cell(figures: dict[str, Any], key: str, fmt: str) -> str:
    value = figures.get(key)
    if value is None:
        return "-"
    if fmt == "spread":
        return f"{min(value)}-{max(value)} ({figures['fair_share']:.1f})"
    return fmt.format(value)


def scale_markdown(records: list[dict], chart: str | None, note: str = "") -> str:
    """The scale table: one row per workload figure, one column per size."""
    out = [note, ""] if note else []
    for record in records:
        workload = record.get("workload", "?")
        if record.get("status") != "ok":
            out += [f"**{workload}**: {record.get('status')}: {record.get('error', '')}", ""]
            continue
        sizes = record["sizes"]
        columns = list(sizes)
        out.append(f"| {workload} | " + " | ".join(f"{c} {WHAT[workload]}" for c in columns) + " |")
        out.append("|---|" + "---:|" * len(columns))
        for key, label, fmt in ROWS[workload]:
            cells = [_cell(sizes[c], key, fmt) for c in columns]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    if chart:
        out += [f"![scale chart]({chart})", ""]
    return "\n".join(out)


def write_scale_chart(records: list[dict], path: Path) -> Path:
    """One panel per workload: its first figure against the size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    shown = [r for r in records if r.get("status") == "ok"]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(4.2 * max(1, len(shown)), 3.4))
    axes = list(axes) if len(shown) > 1 else [axes]
    for ax, record in zip(axes, shown, strict=False):
        workload = record["workload"]
        key, label, _fmt = ROWS[workload][0]
        sizes = record["sizes"]
        xs = [int(c) for c in sizes]
        ax.plot(xs, [sizes[c][key] for c in sizes], marker="o")
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(xs, [f"{x:,}" for x in xs])
        ax.set_xlabel(WHAT[workload], fontsize=8)
        ax.set_title(f"{workload}: {label}", fontsize=9)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
