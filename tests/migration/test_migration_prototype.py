"""The prototype's task files and driver logic, unchanged, on a LocalPool (issue #18).

The files in ``tasks/`` are written in the prototype's style: each starts with
``from engine.azbatchengine import AzureBatchEngine`` and defines ``do_action``.
The driver functions below keep the prototype's driver logic: submit rounds of
task ids (re-using them), poll ``num_results_returned()``, read the dicts of
``get_results()`` and close the job.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from pathlib import Path

import pytest

import realtime_batch as rb

HERE = Path(__file__).resolve().parent
TASKS = HERE / "tasks"
PROTOTYPE_KEYS = {"result", "id", "jobid", "taskid", "error"}
NEEDS_JDK = pytest.mark.skipif(
    not (shutil.which("javac") and shutil.which("java") and shutil.which("jar")),
    reason="no JDK (javac, java, jar) on PATH",
)


@pytest.fixture(params=["memory", "zmq"])
def transport_url(request):
    if request.param == "memory":
        return f"memory://migration-{uuid.uuid4().hex}"
    return "zmq://127.0.0.1:0"


def wait_for(job_manager, total, timeout=60.0):
    """The prototype's polling loop, with an end so that a failure cannot hang."""
    end = time.monotonic() + timeout
    result = 0
    while result < total:
        assert time.monotonic() < end, f"only {result} of {total} results arrived"
        result = job_manager.num_results_returned()
        time.sleep(0.05)


def test_prototype_driver_rounds(transport_url, no_leaked_processes):
    files = [TASKS / "1_task.py", TASKS / "2_task.py"]
    pool = rb.LocalPool(engines=2, transport=transport_url, task_files=files)
    # `with` only closes the job manager if an assertion fails; the driver closes it itself
    with pool, rb.JobManager("client_1", pool.job, pool) as job_manager:
        total = 3
        for i in range(total):
            job_manager.submit_task(str(i), "2_task.py", "this is an input param list")
        wait_for(job_manager, total)
        first = job_manager.get_results()

        total = 4  # the same ids again, and one more
        for i in range(total):
            job_manager.submit_task(str(i), "1_task.py", "this is an input param list")
        wait_for(job_manager, total)
        second = job_manager.get_results()
        job_manager.close_job()

    assert all(set(i) == PROTOTYPE_KEYS for i in first + second)
    assert sorted(i["taskid"] for i in first) == ["0", "1", "2"]
    assert sorted(i["taskid"] for i in second) == ["0", "1", "2", "3"]
    for i in first:
        assert i["result"] == "task #2 got 6 words"
        assert i["error"] == "no error"
        assert i["jobid"] == pool.job and i["id"]
    for i in second:
        assert i["result"] == ["seen:" + w for w in ("this", "is", "an", "input", "param", "list")]
        assert i["error"] == "no error"


def test_prototype_driver_sees_reported_errors(no_leaked_processes):
    url = f"memory://migration-{uuid.uuid4().hex}"
    pool = rb.LocalPool(engines=1, transport=url, task_files=[TASKS / "2_task.py"])
    with pool, rb.JobManager("client_1", pool.job, pool) as job_manager:
        job_manager.submit_task("7", "2_task.py", "fail the thing")
        wait_for(job_manager, 1)
        [i] = job_manager.get_results()
    assert i["taskid"] == "7" and i["result"] is None
    assert i["error"] == "could not do the thing"  # as the task returned it


@pytest.mark.java
@NEEDS_JDK
def test_pi_runner_driver(transport_url, tmp_path, no_leaked_processes):
    from realtime_batch.engine import build_jar

    jar = build_jar(HERE / "PiEstimate.java", tmp_path / "pi.jar")
    files = [TASKS / "pi_runner.py", jar]
    task_module, task_input = "pi_runner.py", "java -Xmx4096m -jar pi.jar 100"
    pool = rb.LocalPool(engines=2, transport=transport_url, task_files=files)
    with pool, rb.JobManager("client_1", pool.job, pool) as job_manager:
        total = 5
        for i in range(total):
            job_manager.submit_task(str(i), task_module, task_input)
        wait_for(job_manager, total)
        estimates = []
        for i in job_manager.get_results():
            assert i["error"] == "no error", i
            estimates.append(float(i["result"][0]))
        job_manager.close_job()
    assert len(estimates) == total
    assert all(abs(e - math.pi) < 0.02 for e in estimates)  # 100 terms of the series
