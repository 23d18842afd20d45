"""Workflows end to end (#20): Session + LocalPool with real engines, on every transport.

The Monte Carlo example (examples/workflow/: ``pi_task.py`` samples, ``combine.py``
reduces) runs as a workflow; a task whose worker dies on its first attempt (an
infrastructure fault, retried by the engine like any task's) sits in the middle of a
chain and the chain completes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from session_pools import BACKENDS, backend_pool

import realtime_batch as rb

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
EXAMPLE_TASKS = [EXAMPLES / "pi" / "pi_task.py", EXAMPLES / "workflow" / "combine.py"]

CRASH_ONCE = '''
    import os


    def do_action(engine, args):
        """Kill this worker on the first attempt (marker file absent), then return args[1]."""
        marker, value = args
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write("crashed")
            os._exit(3)
        return value, None
'''


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> list[Path]:
    crash = tmp_path_factory.mktemp("workflow-tasks") / "crash_once.py"
    crash.write_text(textwrap.dedent(CRASH_ONCE).lstrip())
    return [*EXAMPLE_TASKS, crash]


@pytest.fixture(scope="module", params=BACKENDS)
def pool(request, task_files):
    with backend_pool(request.param, task_files, engines=2) as local_pool:
        yield local_pool


def test_monte_carlo_fan_out_then_reduce(pool):
    with rb.Session(pool) as s:
        parts = s.map("pi_task.py", [2000] * 20, range(20))
        total = s.submit("combine.py", parts)
        value = total.result(timeout=120)
        assert value["samples"] == 40_000 and value["parts"] == 20
        assert value["hits"] == sum(p.result()["hits"] for p in parts)
        assert 2.9 < value["pi"] < 3.4


def test_a_chain_survives_a_worker_crash_in_the_middle(pool, tmp_path):
    with rb.Session(pool, max_retries=3) as s:
        start = s.submit("pi_task.py", 100, 1)
        crashing = s.submit("crash_once.py", str(tmp_path / "crashed"), start)
        total = s.submit("combine.py", [crashing, start])
        value = total.result(timeout=120)
        assert (tmp_path / "crashed").exists()  # the first attempt did die
        assert value["samples"] == 200
        assert crashing.result()["samples"] == 100


def test_a_failing_input_stops_the_reduce(pool):
    with rb.Session(pool) as s:
        bad = s.submit("pi_task.py", -1)  # ValueError on the engine
        total = s.submit("combine.py", [bad])
        with pytest.raises(rb.DependencyError) as caught:
            total.result(timeout=60)
        assert caught.value.dependency == bad.task_id
        assert caught.value.cause.remote_type == "ValueError"
