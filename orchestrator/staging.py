"""Blob staging for Azure Batch pools.

Each pool gets one container (``<prefix>-<pool id>``) holding the realtime-batch
wheel, the task files and the input files; a second container (``…-logs``) receives
engine logs. Files are uploaded only when their content changed (SHA-256 kept in the
blob's metadata). Nodes never see an account key: they download the staged files
through Batch (auto-storage or a pool identity, see ``AzureBatchPool``), and get a
**create/write-only** SAS scoped to the logs container (output files).

With an account key the SAS is signed with it (it never leaves the client); with
Entra ID (``DefaultAzureCredential``) it is a user delegation SAS, whose key Storage
grants for 7 days at most (:data:`MAX_DELEGATION`). Every storage failure surfaces
as :class:`StagingError`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    BlobServiceClient,
    ContainerSasPermissions,
    ContentSettings,
    UserDelegationKey,
    generate_container_sas,
)

from .pool import OrchestratorError, StrPath

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "NODE_PLATFORM",
    "BlobStaging",
    "StagedFile",
    "StagingError",
    "build_wheel",
    "build_wheelhouse",
    "constraints_for",
    "container_name",
    "file_sha256",
]

logger = logging.getLogger(__name__)

HASH_METADATA_KEY = "sha256"
#: SAS validity starts this long in the past (clock skew between client and service).
CLOCK_SKEW = timedelta(minutes=5)
_CHUNK = 1 << 20
#: what pool nodes run (Ubuntu 24.04: CPython 3.12 on x86-64): the wheelhouse is for it
NODE_PLATFORM = {"platform": "manylinux2014_x86_64", "python_version": "3.12"}
#: the longest validity Storage grants a user delegation key
MAX_DELEGATION = timedelta(days=7)


class StagingError(OrchestratorError):
    """Staging files in Blob storage failed."""


def _storage_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Map azure-core errors of a ``BlobStaging`` method into :class:`StagingError`."""

    @functools.wraps(method)
    def mapped(self: BlobStaging, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except StagingError:
            raise
        except AzureError as exc:
            what = method.__name__.strip("_").replace("_", " ")
            raise StagingError(
                f"storage account {self.service.account_name}: {what} failed: {exc.message}"
            ) from exc

    return mapped


@attrs.frozen
class StagedFile:
    """A file in the staging container.

    Attributes:
        blob_name: name inside the container (``tasks/hello.py``).
        sha256: hex digest of the content.
        size: bytes.
        uploaded: False when an identical blob was already there.
    """

    blob_name: str
    sha256: str
    size: int
    uploaded: bool

    @property
    def file_name(self) -> str:
        """Base name of the file (what the engine sees)."""
        return self.blob_name.rsplit("/", 1)[-1]


def _expires(delegation_key: Any) -> datetime:
    """When a user delegation key expires (the service writes ``...Z``)."""
    return datetime.fromisoformat(delegation_key.signed_expiry.replace("Z", "+00:00"))


def container_name(pool_id: str, prefix: str = "rtbatch", suffix: str = "") -> str:
    """Blob container name for a pool: lower case, ``[a-z0-9-]``, 3 to 63 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"{prefix}-{pool_id}{suffix}".lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")
    if len(name) > 63:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: 63 - 9 - len(suffix)].rstrip('-')}-{digest}{suffix}"
    if len(name) < 3:
        raise StagingError(f"cannot derive a container name from pool id {pool_id!r}")
    return name


def file_sha256(path: StrPath) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_wheel(source_dir: StrPath | None = None, out_dir: StrPath | None = None) -> Path:
    """Build the realtime-batch wheel with ``pip wheel`` and return its path.

    The build runs on a copy of the source's package directories in a temporary
    directory: the checkout is not written to, and nothing left from an earlier build
    gets into the wheel.

    Args:
        source_dir: project checkout (holding ``pyproject.toml``); found from this
            package's location when None (an editable or source install).
        out_dir: where to put the wheel; a new temporary directory when None.

    Raises:
        StagingError: no source tree was found or the build failed.
    """
    if source_dir is None:
        for parent in Path(__file__).resolve().parents:
            if (parent / "pyproject.toml").is_file() and (parent / "orchestrator").is_dir():
                source_dir = parent
                break
        else:
            raise StagingError(
                "no realtime-batch source tree found to build a wheel from; "
                "set [batch] wheel = 'path/to/realtime_batch-*.whl' in rtbatch.toml"
            )
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="rtbatch-wheel-"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out)]
    with tempfile.TemporaryDirectory(prefix="rtbatch-wheel-src-") as copy:
        try:
            source = _copy_for_build(Path(source_dir), Path(copy))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            proc = subprocess.run(
                [*cmd, str(source)], capture_output=True, text=True, check=False, timeout=600
            )
            error = proc.stderr.strip()[-2000:] if proc.returncode else ""
    if error:
        raise StagingError(
            f"building the wheel from {source_dir} failed (set [batch] wheel = "
            f"'path/to/realtime_batch-*.whl' to use a built one):\n{error}"
        )
    wheels = sorted(out.glob("realtime_batch-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise StagingError(f"pip wheel produced no realtime_batch wheel in {out}")
    logger.info("built %s", wheels[-1].name)
    return wheels[-1]


def _copy_for_build(source: Path, into: Path) -> Path:
    """Copy what building ``source`` reads (its top-level files and package directories)
    into ``into``; return the copy.

    Built in the checkout itself, setuptools kept its ``build/`` there, and the copy of
    a module since removed from the source went into every later wheel.
    """
    meta = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = meta.get("tool", {}).get("setuptools", {})
    roots = {str(path).split("/")[0] for path in setuptools.get("package-dir", {}).values()}
    roots |= {str(name).split(".")[0] for name in setuptools.get("packages", [])}
    target = into / "src"
    target.mkdir()
    for entry in source.iterdir():
        if entry.is_file():
            shutil.copy2(entry, target / entry.name)
        elif entry.name in roots and entry.is_dir():
            shutil.copytree(entry, target / entry.name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    return target


def build_wheelhouse(wheel: StrPath, out_dir: StrPath | None = None, extras: str = "azure") -> Path:
    """Download the wheels ``wheel[extras]`` needs on a node (``pip download``).

    For :data:`NODE_PLATFORM`, binary wheels only: nodes then install with
    ``pip --no-index`` from what was staged, so every node, also one joining weeks
    later or in a subnet without internet, gets the same versions.

    Raises:
        StagingError: pip failed (no index reachable, no wheel for the platform).
    """
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="rtbatch-wheelhouse-"))
    spec = f"{Path(wheel).resolve()}[{extras}]" if extras else str(Path(wheel).resolve())
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
        "--platform", NODE_PLATFORM["platform"], "--python-version",
        NODE_PLATFORM["python_version"], "-d", str(out), spec,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    if proc.returncode != 0:
        raise StagingError(
            "downloading the nodes' dependency wheels failed (make a wheelhouse with "
            "`pip download --only-binary=:all: --platform manylinux2014_x86_64 "
            "--python-version 3.12 -d wheelhouse 'realtime_batch-*.whl[azure]'` and set "
            f"[batch] wheelhouse = 'wheelhouse'):\n{proc.stderr.strip()[-2000:]}"
        )
    return out


def constraints_for(wheels: Iterable[StrPath]) -> str:
    """A pip constraints file pinning every wheel given (``name==version`` lines)."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    pins = {}
    for wheel in wheels:
        try:
            name, version, _, _ = parse_wheel_filename(Path(wheel).name)
        except InvalidWheelFilename as exc:
            raise StagingError(f"not a wheel file name: {Path(wheel).name}") from exc
        if pins.get(name, str(version)) != str(version):
            raise StagingError(f"two versions of {name} in the wheelhouse")
        pins[name] = str(version)
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


class BlobStaging:
    """Upload a pool's files to its container and hand out SAS URLs for nodes.

    Args:
        service: a ``BlobServiceClient`` (connection string with a key, or account
            URL with a token credential).
        pool_id: the pool whose container this is.
        prefix: container name prefix.
        sas_lifetime: validity of the read SAS given to nodes for resource files.
        log_sas_lifetime: validity of the write SAS engines use to upload logs (must
            outlive the engines, which upload at exit).
    """

    def __init__(
        self,
        service: BlobServiceClient,
        pool_id: str,
        *,
        prefix: str = "rtbatch",
        sas_lifetime: timedelta = timedelta(hours=2),
        log_sas_lifetime: timedelta = timedelta(days=7),
    ) -> None:
        self.service = service
        self.pool_id = pool_id
        self.container = container_name(pool_id, prefix)
        self.logs_container = container_name(pool_id, prefix, "-logs")
        self.sas_lifetime = sas_lifetime
        self.log_sas_lifetime = log_sas_lifetime
        self._delegation_key: UserDelegationKey | None = None

    @classmethod
    def from_connection_string(cls, conn_str: str, pool_id: str, **options: Any) -> BlobStaging:
        """Staging for ``pool_id`` from a storage connection string."""
        return cls(BlobServiceClient.from_connection_string(conn_str), pool_id, **options)

    def __repr__(self) -> str:
        return f"BlobStaging(account={self.service.account_name!r}, container={self.container!r})"

    # ------------------------------------------------------------------ upload
    @_storage_errors
    def ensure_containers(self) -> None:
        """Create the staging and logs containers (private access) if missing."""
        for name in (self.container, self.logs_container):
            try:
                self.service.create_container(name)
                logger.info("created container %s", name)
            except ResourceExistsError:
                pass

    @_storage_errors
    def upload(self, files: Iterable[StrPath], folder: str) -> list[StagedFile]:
        """Upload files under ``folder/`` unless an identical blob is already there.

        Raises:
            StagingError: a file is missing or two files share a base name.
        """
        paths = [Path(f) for f in files]
        names = [p.name for p in paths]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise StagingError(f"several staged files share a name: {sorted(duplicates)}")
        self.ensure_containers()
        container = self.service.get_container_client(self.container)
        staged = []
        for path in paths:
            if not path.is_file():
                raise StagingError(f"cannot stage {path}: no such file")
            blob_name = f"{folder}/{path.name}"
            digest = file_sha256(path)
            blob = container.get_blob_client(blob_name)
            try:
                current = blob.get_blob_properties().metadata.get(HASH_METADATA_KEY)
            except ResourceNotFoundError:
                current = None
            uploaded = current != digest
            if uploaded:
                with open(path, "rb") as data:
                    blob.upload_blob(
                        data,
                        overwrite=True,
                        metadata={HASH_METADATA_KEY: digest},
                        content_settings=ContentSettings(content_type="application/octet-stream"),
                    )
                logger.info("staged %s (%d bytes)", blob_name, path.stat().st_size)
            else:
                logger.debug("unchanged, not uploaded: %s", blob_name)
            staged.append(StagedFile(blob_name, digest, path.stat().st_size, uploaded))
        return staged

    @_storage_errors
    def download(self, blob_name: str) -> bytes:
        """The content of a staged blob (``StagingError`` caused by
        ``ResourceNotFoundError`` when it is missing)."""
        container = self.service.get_container_client(self.container)
        return container.download_blob(blob_name).readall()

    @_storage_errors
    def prune(self, folder: str, keep: Iterable[str]) -> list[str]:
        """Delete blobs under ``folder/`` whose names are not in ``keep``; return them."""
        keep_set = set(keep)
        container = self.service.get_container_client(self.container)
        removed = []
        for blob in container.list_blobs(name_starts_with=f"{folder}/"):
            if blob.name not in keep_set:
                container.delete_blob(blob.name)
                removed.append(blob.name)
        return removed

    @_storage_errors
    def delete(self, *, keep_logs: bool = True) -> None:
        """Delete the staging container (and the logs container unless ``keep_logs``)."""
        names = [self.container] if keep_logs else [self.container, self.logs_container]
        for name in names:
            try:
                self.service.delete_container(name)
            except ResourceNotFoundError:
                pass

    # --------------------------------------------------------------------- SAS
    @_storage_errors
    def _sign(
        self, container: str, permission: ContainerSasPermissions, lifetime: timedelta
    ) -> str:
        now = datetime.now(timezone.utc)
        start, expiry = now - CLOCK_SKEW, now + lifetime
        credential = self.service.credential
        account_key = getattr(credential, "account_key", None)
        signing: dict[str, Any]
        if account_key:
            signing = {"account_key": account_key}
        else:
            # a user delegation key lasts 7 days at most, and a SAS no longer than its key
            expiry = min(expiry, start + MAX_DELEGATION)
            key = self._delegation_key
            if key is None or _expires(key) < expiry:
                key = self.service.get_user_delegation_key(start, start + MAX_DELEGATION)
                self._delegation_key = key
            signing = {"user_delegation_key": key}
        return generate_container_sas(
            self.service.account_name,
            container,
            permission=permission,
            start=start,
            expiry=expiry,
            **signing,
        )

    def container_sas_url(
        self, container: str, permission: ContainerSasPermissions, lifetime: timedelta
    ) -> str:
        """URL of ``container`` (any, in this account) with a SAS scoped to it."""
        sas = self._sign(container, permission, lifetime)
        return f"{self.service.get_container_client(container).url}?{sas}"

    def read_sas(self) -> str:
        """A read-only SAS token scoped to the staging container."""
        return self._sign(self.container, ContainerSasPermissions(read=True), self.sas_lifetime)

    def container_url(self) -> str:
        """URL of the staging container (no SAS: for a pool identity)."""
        return self.service.get_container_client(self.container).url

    def blob_url(self, blob_name: str, sas: str | None = None) -> str:
        """URL of a staged blob; with ``sas`` appended when given."""
        url = self.service.get_blob_client(self.container, blob_name).url
        return f"{url}?{sas}" if sas else url

    def logs_url(self) -> str:
        """URL of the logs container (no SAS: for a pool identity)."""
        return self.service.get_container_client(self.logs_container).url

    def log_container_url(self) -> str:
        """Logs container URL with a create/write-only SAS (no read, list or delete)."""
        sas = self._sign(
            self.logs_container,
            ContainerSasPermissions(create=True, write=True),
            self.log_sas_lifetime,
        )
        url = self.service.get_container_client(self.logs_container).url
        return f"{url}?{sas}"

    # ------------------------------------------------------------------- logs
    @_storage_errors
    def list_logs(self, prefix: str = "") -> list[str]:
        """Names of the log blobs under ``prefix``."""
        container = self.service.get_container_client(self.logs_container)
        try:
            return [b.name for b in container.list_blobs(name_starts_with=prefix or None)]
        except ResourceNotFoundError:
            return []

    @_storage_errors
    def download_logs(self, dest: StrPath, prefix: str = "") -> list[Path]:
        """Download log blobs under ``prefix`` into ``dest`` (keeping their paths)."""
        container = self.service.get_container_client(self.logs_container)
        out = []
        root = Path(dest).resolve()
        for name in self.list_logs(prefix):
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                logger.warning("skipping log blob with unsafe name %r", name)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                container.download_blob(name).readinto(handle)
            out.append(target)
        return out
