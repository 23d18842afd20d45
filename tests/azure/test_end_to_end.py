"""Offline end to end: AzureBatchPool -> Blob staging -> engines started by the Batch fake
from the staged files -> ZeroMQ broker -> Session -> results, then engine logs in Blob."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient
from batch_fake import DEFAULT_ACCOUNT, DEFAULT_KEY, BatchFake
from node_sim import NodeSimulator

from realtime_batch.orchestrator.azure_batch import AzureBatchPool, PoolSpec
from realtime_batch.orchestrator.session import Session

HELLO = (
    "def do_action(engine, args):\n    return f'hello {args[0]} from {engine.engine_id}', None\n"
)


@pytest.fixture
def broker():
    """The ZeroMQ broker as a process on a free loopback port; yields its zmq:// URL."""
    cmd = [sys.executable, "-m", "realtime_batch.transport.zeromq", "--bind", "tcp://127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), f"broker did not start: {line!r}"
        yield "zmq://" + line.split()[1].removeprefix("tcp://")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def simulated_batch(tmp_path, azurite):
    sim = NodeSimulator(tmp_path / "nodes", auto_storage=azurite)
    fake = BatchFake(on_task=sim, auto_storage="devstoreaccount1")
    url = fake.start()
    try:
        yield fake, url, sim
    finally:
        sim.stop()
        fake.stop()


def _simulated_pool(
    url: str, azurite: str, broker: str, tmp_path: Path, pool_id: str, nodes: int, **options
) -> AzureBatchPool:
    """An ``AzureBatchPool`` on the Batch fake and Azurite, its engines on the simulated
    nodes (a stand-in wheel: the node uses the test interpreter; no dependency wheels,
    so the simulated node skips pip), with the ``hello_task.py`` task staged."""
    (tmp_path / "hello_task.py").write_text(HELLO)
    wheel = tmp_path / "realtime_batch-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"stand-in wheel: the simulated node uses the test interpreter")
    options.setdefault("spec", PoolSpec(dedicated_nodes=nodes, engines_per_node=1))
    return AzureBatchPool(
        BatchClient(endpoint=url, credential=AzureNamedKeyCredential(DEFAULT_ACCOUNT, DEFAULT_KEY)),
        BlobServiceClient.from_connection_string(azurite),
        pool_id,
        transport_url=broker,
        task_files=[tmp_path / "hello_task.py"],
        wheel=wheel,
        wheelhouse=tmp_path,
        poll_interval=0.01,
        **options,
    )


def test_pool_to_results_offline(no_leaked_processes, simulated_batch, broker, azurite, tmp_path):
    fake, url, sim = simulated_batch
    (tmp_path / "data.txt").write_text("input\n")
    pool = _simulated_pool(
        url, azurite, broker, tmp_path, "e2e", 1,
        spec=PoolSpec(dedicated_nodes=1, engines_per_node=2),
        input_files=[tmp_path / "data.txt"],
    )  # fmt: skip
    try:
        pool.create()
        job = pool.start_engines()
        pool.wait_ready()
        with Session(pool) as session:
            futures = [session.submit("hello_task.py", f"n{i}") for i in range(6)]
            values = [f.result(timeout=60) for f in futures]
        assert not sim.errors, sim.errors
        assert [v.split(" from ")[0] for v in values] == [f"hello n{i}" for i in range(6)]
        engines = {v.split(" from ")[1] for v in values}
        [node] = fake.nodes[pool.pool_id]
        assert engines <= {f"{node['id']}/engine-000{i}-r0" for i in range(2)}
        # engines were run from the staged files: the input file landed in their work dir
        wd = tmp_path / f"nodes/{node['id']}/workitems/{job}/engine-0000-r0/wd"
        assert (wd / "data.txt").is_file()
        sim.stop()  # the engines end (SIGTERM): their logs go to Blob as output files
        assert not sim.errors, sim.errors
        assert {t["state"] for t in fake.tasks[job].values()} == {"completed"}
        pool.delete_job(job)
        assert pool.jobs() == []
        logs = pool.logs(tmp_path / "logs", job=job)
        assert {p.name for p in logs} == {"stdout.txt", "stderr.txt"}
        assert len(logs) == 4
    finally:
        pool.staging.delete(keep_logs=False)
        pool.close()


def test_shrink_stops_the_leaving_engine_through_the_broker(
    no_leaked_processes, simulated_batch, broker, azurite, tmp_path
):
    fake, url, sim = simulated_batch
    pool = _simulated_pool(url, azurite, broker, tmp_path, "e2e-shrink", 2, drain_timeout=30)
    try:
        pool.create()
        job = pool.start_engines()
        pool.wait_ready()
        with Session(pool) as session:
            assert session.submit("hello_task.py", "a").result(timeout=60).startswith("hello a")
            before = {t["id"]: t["nodeInfo"]["nodeId"] for t in fake.tasks[job].values()}
            pool.resize(1)
            [kept] = fake.tasks[job]
            [(gone, node)] = [(t, n) for t, n in before.items() if t != kept]
            # the leaving engine was asked to stop through the broker and exited on its own
            log = tmp_path / f"nodes/{node}/workitems/{job}/{gone}/stderr.txt"
            assert "asked to stop" in log.read_text()
            assert [n["id"] for n in fake.nodes[pool.pool_id]] == [before[kept]]
            value = session.submit("hello_task.py", "b").result(timeout=60)
            assert value == f"hello b from {before[kept]}/{kept}"
        assert not sim.errors, sim.errors
    finally:
        sim.stop()
        pool.staging.delete(keep_logs=False)
        pool.close()


def test_large_values_reach_sas_only_engines_through_the_jobs_container(
    no_leaked_processes, simulated_batch, broker, azurite, tmp_path
):
    """Engines without an identity fetch and store payloads with their staged SAS (#20)."""
    _, url, sim = simulated_batch
    pool = _simulated_pool(url, azurite, broker, tmp_path, "e2epayload", 1)
    try:
        pool.create()
        job = pool.start_engines()
        pool.wait_ready()
        big = "é" * (600 * 1024)  # over the threshold: by reference both ways
        with Session(pool) as session:
            value = session.submit("hello_task.py", big).result(timeout=60)
        assert not sim.errors, sim.errors
        assert value.startswith(f"hello {big} from ")
        container = pool.blob_service.get_container_client(pool.payload_store.container(job))
        assert list(container.list_blobs()) == []  # taken, then the session closed
        sim.stop()
        pool.delete_job(job)
        assert not container.exists()
    finally:
        pool.staging.delete(keep_logs=False)
        pool.close()
