"""Fixtures shared by the Azure tests: task files and ``make_pool`` (an AzureBatchPool
on the Batch fake + Azurite). Imported by tests/azure/conftest.py."""

from __future__ import annotations

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient
from batch_fake import DEFAULT_ACCOUNT, DEFAULT_KEY

from realtime_batch.orchestrator.azure_batch import AzureBatchPool, PoolSpec

ENGINE_URL = "zmq://10.0.0.10:5555"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "hello.py").write_text("def do_action(engine, args):\n    return args, None\n")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / "pi.jar").write_bytes(b"PK\x03\x04 not really a jar")
    wheel = tmp_path / "realtime_batch-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x03\x04 stand-in wheel")
    (tmp_path / "wheelhouse").mkdir()
    dep = tmp_path / "wheelhouse/orjson-3.10.0-cp312-cp312-manylinux_2_17_x86_64.whl"
    dep.write_bytes(b"PK\x03\x04 stand-in dependency")
    return tmp_path


@pytest.fixture
def make_pool(batch_fake, azurite, files, request):
    _, url = batch_fake
    made = []

    def make(pool_id: str = "p1", *, credential=None, endpoint=None, **options):
        batch = BatchClient(
            endpoint=endpoint or url,
            credential=credential or AzureNamedKeyCredential(DEFAULT_ACCOUNT, DEFAULT_KEY),
            # an HTTPS fake's certificate (``batch_fake_https``, same tmp_path) is trusted
            **({"connection_verify": str(files / "fake.crt")} if endpoint else {}),
        )
        options.setdefault("task_files", [files / "hello.py"])
        options.setdefault("input_files", [files / "data.csv"])
        options.setdefault("engine_transport_url", ENGINE_URL)
        options.setdefault("wheelhouse", files / "wheelhouse")
        options.setdefault("spec", PoolSpec(dedicated_nodes=2, spot_nodes=1, engines_per_node=2))
        pool = AzureBatchPool(
            batch,
            BlobServiceClient.from_connection_string(azurite),
            f"{pool_id}-{request.node.name[5:30]}".lower().replace("_", "-"),
            transport_url="zmq://127.0.0.1:5555",
            wheel=files / "realtime_batch-0.1.0-py3-none-any.whl",
            poll_interval=0.01,
            **{"drain_timeout": 0.2, **options},
        )
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()
        service = BlobServiceClient.from_connection_string(azurite)
        for name in (pool.staging.container, pool.staging.logs_container):
            container = service.get_container_client(name)
            if container.exists():
                container.delete_container()
