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


# ---------------------------------------------------------------- Batch fake
@pytest.fixture
def batch_fake():
    """The Batch REST fake over HTTP (shared key); yields (fake, endpoint)."""
    from batch_fake import BatchFake

    fake = BatchFake(auto_storage=AZURITE_ACCOUNT)  # staging account linked as auto-storage
    url = fake.start()
    try:
        yield fake, url
    finally:
        fake.stop()


def self_signed_context(tmp_path: Path):
    """An SSL server context with a fresh self-signed certificate for 127.0.0.1."""
    import ssl
    from datetime import timedelta

    from selfsigned_tls import write_self_signed

    cert_path, key_path = write_self_signed(tmp_path, "fake", lifetime=timedelta(hours=1))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


@pytest.fixture
def batch_fake_https(tmp_path: Path):
    """The Batch REST fake over HTTPS accepting one bearer token; yields (fake, url, token)."""
    from batch_fake import BatchFake

    token = "fake-entra-token"
    fake = BatchFake(token=token, auto_storage=AZURITE_ACCOUNT)
    url = fake.start(ssl_context=self_signed_context(tmp_path))
    try:
        yield fake, url, token
    finally:
        fake.stop()


from azure_fixtures import files, free_port, make_pool  # noqa: E402,F401  (shared here)
