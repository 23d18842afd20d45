"""Blob staging against Azurite: hash skip, SAS permissions and expiry enforced."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from realtime_batch.orchestrator.staging import (
    BlobStaging,
    StagingError,
    container_name,
    file_sha256,
)


@pytest.fixture
def staging(azurite: str, request: pytest.FixtureRequest):
    pool_id = f"pool-{request.node.name[:30]}".lower().replace("_", "-")
    stage = BlobStaging.from_connection_string(azurite, pool_id)
    try:
        yield stage
    finally:
        stage.delete(keep_logs=False)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "hello.py").write_text("def do_action(engine, args):\n    return args, None\n")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    return tmp_path


def test_container_name_is_valid():
    assert container_name("My_Pool.01") == "rtbatch-my-pool-01"
    long = container_name("x" * 100, suffix="-logs")
    assert len(long) <= 63 and long.endswith("-logs")
    assert container_name("x" * 100) != container_name("x" * 99)


def test_upload_skips_unchanged_files(staging, files):
    first = staging.upload([files / "hello.py", files / "data.csv"], "tasks")
    assert [f.uploaded for f in first] == [True, True]
    assert first[0].sha256 == file_sha256(files / "hello.py")
    again = staging.upload([files / "hello.py", files / "data.csv"], "tasks")
    assert [f.uploaded for f in again] == [False, False]
    (files / "data.csv").write_text("a,b\n3,4\n")
    third = staging.upload([files / "hello.py", files / "data.csv"], "tasks")
    assert [f.uploaded for f in third] == [False, True]
    blob = staging.service.get_blob_client(staging.container, "tasks/data.csv")
    assert blob.download_blob().readall() == b"a,b\n3,4\n"


def test_upload_rejects_missing_and_duplicate_names(staging, files, tmp_path_factory):
    with pytest.raises(StagingError, match="no such file"):
        staging.upload([files / "nope.py"], "tasks")
    other = tmp_path_factory.mktemp("other") / "hello.py"
    other.write_text("x = 1\n")
    with pytest.raises(StagingError, match="share a name"):
        staging.upload([files / "hello.py", other], "tasks")


def test_prune_removes_files_no_longer_staged(staging, files):
    staging.upload([files / "hello.py", files / "data.csv"], "tasks")
    removed = staging.prune("tasks", keep=["tasks/hello.py"])
    assert removed == ["tasks/data.csv"]


def test_read_sas_reads_but_cannot_write_or_list(staging, files):
    staging.upload([files / "hello.py"], "tasks")
    sas = staging.read_sas()
    assert "sp=r&" in sas or sas.endswith("sp=r")
    url = staging.blob_url("tasks/hello.py", sas)
    got = requests.get(url, timeout=10)
    assert got.status_code == 200 and got.content.startswith(b"def do_action")
    # write with the read SAS: refused by the service
    put = requests.put(
        staging.blob_url("tasks/evil.py", sas),
        data=b"x",
        headers={"x-ms-blob-type": "BlockBlob"},
        timeout=10,
    )
    assert put.status_code == 403
    # the SAS is scoped to this container: another container is refused
    other = staging.service.get_container_client("rtbatch-someone-else")
    other.create_container()
    try:
        other.upload_blob("x.txt", b"secret")
        foreign = f"{other.url}/x.txt?{sas}"
        assert requests.get(foreign, timeout=10).status_code == 403
    finally:
        other.delete_container()


def test_expired_sas_is_refused(staging, files):
    staging.upload([files / "hello.py"], "tasks")
    staging.sas_lifetime = -timedelta(minutes=1)  # expired a minute ago
    url = staging.blob_url("tasks/hello.py", staging.read_sas())
    assert requests.get(url, timeout=10).status_code == 403


def test_log_sas_writes_but_cannot_read(staging):
    staging.ensure_containers()
    url = staging.log_container_url()
    base, _, sas = url.partition("?")
    put = requests.put(
        f"{base}/job-1/engine-0/stdout.txt?{sas}",
        data=b"engine started\n",
        headers={"x-ms-blob-type": "BlockBlob"},
        timeout=10,
    )
    assert put.status_code == 201
    assert requests.get(f"{base}/job-1/engine-0/stdout.txt?{sas}", timeout=10).status_code == 403
    assert staging.list_logs("job-1/") == ["job-1/engine-0/stdout.txt"]


def test_download_logs(staging, tmp_path):
    staging.ensure_containers()
    logs = staging.service.get_container_client(staging.logs_container)
    logs.upload_blob("job-1/engine-0/stdout.txt", b"hello\n")
    logs.upload_blob("job-2/engine-0/stdout.txt", b"other\n")
    got = staging.download_logs(tmp_path / "logs", prefix="job-1/")
    assert got == [(tmp_path / "logs/job-1/engine-0/stdout.txt").resolve()]
    assert got[0].read_bytes() == b"hello\n"


def test_repr_and_sas_carry_no_account_key(staging, azurite):
    key = BlobServiceClient.from_connection_string(azurite).credential.account_key
    assert key not in repr(staging)
    assert key not in staging.read_sas() and key not in staging.log_container_url()


def test_build_wheel_from_the_source_tree(tmp_path):
    from realtime_batch.orchestrator.staging import build_wheel

    wheel = build_wheel(out_dir=tmp_path)
    assert wheel.name.startswith("realtime_batch-") and wheel.suffix == ".whl"
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "realtime_batch/orchestrator/azure_batch.py" in names
    assert "realtime_batch/engine/__init__.py" in names


def test_wheel_build_failure_says_what_to_set(tmp_path):
    from realtime_batch.orchestrator.staging import StagingError, build_wheel

    (tmp_path / "pyproject.toml").write_text("not toml [")
    with pytest.raises(StagingError, match=r"set \[batch\] wheel = "):
        build_wheel(source_dir=tmp_path, out_dir=tmp_path / "out")


def test_constraints_pin_every_wheel_once():
    from realtime_batch.orchestrator.staging import StagingError, constraints_for

    assert constraints_for(["a/Foo_Bar-1.2-py3-none-any.whl", "zz-0.1-py3-none-any.whl"]) == (
        "foo-bar==1.2\nzz==0.1\n"
    )
    with pytest.raises(StagingError, match="two versions of zz"):
        constraints_for(["zz-0.1-py3-none-any.whl", "zz-0.2-py3-none-any.whl"])
    with pytest.raises(StagingError, match="not a wheel"):
        constraints_for(["notes.txt"])


def test_a_wheel_holds_only_what_the_source_holds_now(tmp_path):
    """Built in the checkout, setuptools kept ``build/`` there, and a module removed
    from the source went on being shipped in every later wheel."""
    import shutil
    import zipfile

    from realtime_batch.orchestrator.staging import build_wheel

    root = Path(__file__).resolve().parents[2]
    source = tmp_path / "checkout"
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(
        ".venv", ".tools", ".git", "build", "*.egg-info", "node_modules", "__pycache__",
        "tests", "benchmarks", "docs", "examples", "dist",
    ))  # fmt: skip
    (source / "engine" / "gone_soon.py").write_text("X = 1\n")
    first = build_wheel(source, tmp_path / "w1")
    assert "realtime_batch/engine/gone_soon.py" in zipfile.ZipFile(first).namelist()
    (source / "engine" / "gone_soon.py").unlink()
    second = build_wheel(source, tmp_path / "w2")
    names = zipfile.ZipFile(second).namelist()
    assert "realtime_batch/engine/engine.py" in names
    assert "realtime_batch/engine/gone_soon.py" not in names
    assert not (source / "build").exists() and not list(source.glob("*.egg-info"))
