"""Fixtures for the offline Azure tests: Azurite (Blob) and the Batch REST fake.

Azurite is an npm package; ``./run test`` installs it into ``.tools/`` and exports
``RTBATCH_AZURITE``. It is required: without it these tests fail, they do not skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The published Azurite development account (public, documented test key).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.azure)


def azurite_script() -> Path:
    """The azurite-blob entry script, resolved (RTBATCH_AZURITE or .tools/)."""
    candidates = [
        os.environ.get("RTBATCH_AZURITE", ""),
        ROOT / ".tools/node_modules/.bin/azurite-blob",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate).resolve()
    pytest.fail(
        "Azurite is not installed: run `./run test` (it installs it), or "
        "`mkdir -p .tools && cd .tools && npm install --no-save azurite@3`, "
        "or point RTBATCH_AZURITE at an azurite-blob script",
        pytrace=False,
    )


def _wait_port(port: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"azurite exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # startup poll
    raise RuntimeError("azurite did not start listening within 30 s")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """A running Azurite Blob service; yields its connection string."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: Azurite needs Node.js", pytrace=False)
    script = azurite_script()
    port = free_port()
    location = tmp_path_factory.mktemp("azurite")
    cmd = [
        node, str(script), "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--location", str(location), "--skipApiVersionCheck", "--loose",
        "--disableTelemetry", "--silent",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, proc, time.monotonic() + 30)
        yield (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
