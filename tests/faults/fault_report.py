"""Turn the fault suite's figures (``RTBATCH_FAULT_REPORT`` JSON) into the Markdown tables
of ``docs/reliability.md``.

Usage::

    rm -f fault-report.json
    RTBATCH_FAULT_REPORT=fault-report.json .venv/bin/python -m pytest tests/faults \\
        tests/test_protocol_fuzz.py
    .venv/bin/python tests/faults/fault_report.py fault-report.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "render"]

#: (scenario key prefix, what it shows)
_TITLES = {
    "a_engine_kills": "(a) engines SIGKILLed at random, restarted",
    "b_broker_restart": "(b) durable broker SIGKILLed, restarted",
    "c_poison": "(c) poison task (kills its worker)",
    "c_engine_killer": "(c) task that kills its engine",
    "d_dead_client": "(d) client SIGKILLed, tasks outstanding",
    "e_lease_renewal": "(e) 3 s task, 1 s lock",
    "f_worker_kills": "(f) task workers SIGKILLed at random (direct mode)",
}


def _get(figures: dict[str, Any], key: str, default: str = "") -> str:
    value = figures.get(key)
    return default if value is None else str(value)


def _throughput_rows(scenarios: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        "| scenario | backend | tasks | task runs | engines killed | task workers killed "
        "| broker restarts | lost | duplicates seen by the user "
        "| duplicates dropped by the session | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(scenarios):
        figures = scenarios[key]
        if "results_received" not in figures:
            continue
        title = next((t for p, t in _TITLES.items() if key.startswith(p)), key)
        rows.append(
            f"| {title} | {_get(figures, 'backend')} | {_get(figures, 'tasks')} "
            f"| {_get(figures, 'task_runs')} | {_get(figures, 'engines_killed', '0')} "
            f"| {_get(figures, 'workers_killed', '0')} "
            f"| {_get(figures, 'broker_restarts', '0')} | {_get(figures, 'lost')} "
            f"| {_get(figures, 'duplicates_seen_by_user')} "
            f"| {_get(figures, 'duplicates_dropped_by_session')} | {_get(figures, 'seconds')} |"
        )
    return rows


def _other_rows(scenarios: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| scenario | backend | outcome |", "|---|---|---|"]
    for key in sorted(scenarios):
        figures = scenarios[key]
        if "results_received" in figures or key.startswith("fuzz"):
            continue
        title = next((t for p, t in _TITLES.items() if key.startswith(p)), key)
        if key.startswith("c_poison"):
            outcome = (
                f"{figures['error_type']} result after {figures['deliveries']} deliveries "
                f"(max_delivery_count={figures['max_delivery_count']}); "
                f"{figures['dead_lettered']} message in the DLQ"
            )
        elif key.startswith("c_engine_killer"):
            outcome = (
                f"{figures['error_type']} result after {figures['engines_killed_by_task']} "
                f"engines died ({figures['engine_restarts']} restarts; "
                f"max_retries={figures.get('max_retries', '?')}, "
                f"max_delivery_count={figures.get('max_delivery_count', '?')}, "
                f"{figures.get('dead_lettered', 0)} message in the DLQ)"
            )
        elif key.startswith("d_dead_client"):
            outcome = (
                f"{figures['tasks_left_by_dead_client']} tasks left behind; its mailbox held up "
                f"to {figures['mailbox_peak']} results, {figures['mailbox_after_ttl']} after "
                f"the {figures['result_ttl_seconds']} s result TTL"
            )
        elif key.startswith("e_lease_renewal"):
            outcome = (
                f"{figures['tasks']} tasks, {figures['task_runs']} runs, "
                f"{figures['duplicates_dropped_by_session']} duplicates"
            )
        else:
            outcome = json.dumps(figures, sort_keys=True)
        rows.append(f"| {title} | {_get(figures, 'backend')} | {outcome} |")
    return rows


def render(report: dict[str, Any]) -> str:
    """The Markdown tables for one report."""
    scenarios = report.get("scenarios", {})
    lines = [*_throughput_rows(scenarios), "", *_other_rows(scenarios)]
    fuzz = scenarios.get("fuzz_protocol")
    if fuzz:
        lines += [
            "",
            f"Fuzzing ({fuzz['decoders']}): {fuzz['inputs_tried']} inputs tried "
            f"({fuzz['examples_per_test']} per test), {fuzz['failed_tests']} failed tests.",
        ]
    lines += ["", f"Written {report.get('written_at', '?')} on {report.get('machine', '?')}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the RTBATCH_FAULT_REPORT JSON file")
    args = parser.parse_args(argv)
    sys.stdout.write(render(json.loads(args.report.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
