"""Payload stores: where large task values wait, named by their SHA-256.

Three stores with one interface (``put``, ``get``, ``delete``, ``drop_session``,
``drop_job``, ``sweep``), keyed by job, session space and digest:

* ``DirectoryStore``: files ``ROOT/JOB/SPACE/DIGEST`` on a disk clients and engines
  share (``LocalPool``'s nodes);
* ``MemoryStore``: bytes in this process (``memory://``, whose engines are threads of
  the client's process);
* ``BlobStore``: Azure Blob Storage, one container per job, blobs ``SPACE/DIGEST``;
  ``ContainerSasStore`` is one job's container reached with a container-scoped SAS
  read from a file (Azure engines without an identity).

A digest must be 64 lowercase hex digits (``check_digest``) and a job or space name
that is not a plain ``NAME`` is replaced by a hash of it (``folder_name``), so nothing
a message says can name a place outside the store. The offload and resolve rules are
in ``realtime_batch/payloads.py``; this module knows nothing of the protocol.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TTL",
    "SAS_FILE",
    "BlobStore",
    "ContainerSasStore",
    "DirectoryStore",
    "MemoryStore",
    "PayloadCorruptError",
    "PayloadError",
    "PayloadMissingError",
    "PayloadStoreError",
    "check_digest",
    "folder_name",
    "open_store",
]

#: seconds after which a session's payloads left behind (a client that died) are swept
DEFAULT_TTL = 24 * 3600.0
#: an ``open_store`` spec naming a file that holds a container URL with a SAS
SAS_FILE = "sas-file:"
DIGEST = re.compile(r"\A[0-9a-f]{64}\Z")
NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")


class PayloadError(Exception):
    """A payload cannot be stored or fetched; the task gets it as its error."""


class PayloadMissingError(PayloadError):
    """The reference names a payload that is not in the job's store (deleted, expired, or
    another job's)."""


class PayloadCorruptError(PayloadError):
    """The stored payload's content does not match the hash its reference names."""


class PayloadStoreError(PayloadError):
    """No store where one is needed, or the store failed."""


def check_digest(digest: Any) -> str:
    """``digest`` if it is a SHA-256 in lowercase hex, else ``ValueError``."""
    if not isinstance(digest, str) or DIGEST.match(digest) is None:
        raise ValueError(f"a payload reference must be 64 lowercase hex digits, got {digest!r}")
    return digest


def _missing(digest: str, job: str, session: str) -> PayloadMissingError:
    return PayloadMissingError(
        f"payload {digest} is not in the store of job {job!r}, session space {session!r} "
        "(deleted, expired, or never stored there)"
    )


def folder_name(name: str) -> str:
    """The directory a job or session name maps to: itself when ``NAME`` allows it,
    else a hash of it (so no name can step outside the store)."""
    if NAME.match(name) is not None:
        return name
    return "h" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class DirectoryStore:
    """Payloads as files ``ROOT/JOB/SESSION/DIGEST`` on a disk clients and engines share.

    Args:
        root: the store's directory (created when missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _dir(self, job: str, session: str) -> Path:
        return self.root / folder_name(job) / folder_name(session)

    def put(self, job: str, session: str, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest`` (written whole, then renamed into place)."""
        folder = self._dir(job, session)
        target = folder / check_digest(digest)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if target.exists():
                os.utime(target)
                return
            temporary = folder / f".{digest}.{os.getpid()}.{threading.get_ident()}"
            temporary.write_bytes(data)
            os.replace(temporary, target)
        except OSError as exc:
            raise PayloadStoreError(f"cannot store payload {digest[:12]}: {exc}") from exc

    def get(self, job: str, session: str, digest: str) -> bytes:
        """The bytes stored under ``digest``; ``PayloadMissingError`` when there are none."""
        try:
            return (self._dir(job, session) / check_digest(digest)).read_bytes()
        except FileNotFoundError:
            raise _missing(digest, job, session) from None
        except OSError as exc:
            raise PayloadStoreError(f"cannot read payload {digest[:12]}: {exc}") from exc

    def delete(self, job: str, session: str, digests: Iterable[str]) -> None:
        """Delete these payloads (those already gone are skipped)."""
        folder = self._dir(job, session)
        for digest in digests:
            (folder / check_digest(digest)).unlink(missing_ok=True)

    def drop_session(self, job: str, session: str) -> None:
        """Delete everything stored for one session."""
        shutil.rmtree(self._dir(job, session), ignore_errors=True)

    def drop_job(self, job: str) -> None:
        """Delete everything stored for one job."""
        shutil.rmtree(self.root / folder_name(job), ignore_errors=True)

    def sweep(self, job: str, ttl: float = DEFAULT_TTL, now: float | None = None) -> int:
        """Delete the job's session directories untouched for ``ttl`` seconds; how many."""
        cutoff = (time.time() if now is None else now) - ttl
        swept = 0
        try:
            folders = list((self.root / folder_name(job)).iterdir())
        except FileNotFoundError:
            return 0
        for folder in folders:
            try:
                newest = max(
                    [folder.stat().st_mtime, *(f.stat().st_mtime for f in folder.iterdir())]
                )
            except OSError:
                continue
            if newest < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                swept += 1
        return swept


class BlobStore:
    """Payloads as blobs ``SPACE/DIGEST`` in one container per job (Azure Blob Storage).

    Args:
        service: a ``BlobServiceClient`` of the staging account (a connection string
            with a key, or the account URL with a token credential such as the nodes'
            managed identity).
        prefix: container name prefix; a job's container is ``PREFIX-p-<hash of job>``.
    """

    def __init__(self, service: Any, prefix: str = "rtbatch") -> None:
        self.service = service
        self.prefix = prefix

    @classmethod
    def from_connection_string(cls, conn_str: str, **options: Any) -> BlobStore:
        """A store on the account of a storage connection string."""
        from azure.storage.blob import BlobServiceClient

        return cls(BlobServiceClient.from_connection_string(conn_str), **options)

    def container(self, job: str) -> str:
        """The job's container name (valid for Blob Storage whatever the job's name)."""
        digest = hashlib.sha256(job.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self.prefix}-p-{digest[:40]}"

    def _client(self, job: str) -> Any:
        """The ``ContainerClient`` of the job's container."""
        return self.service.get_container_client(self.container(job))

    def _blob(self, job: str, session: str, digest: str) -> Any:
        name = f"{folder_name(session)}/{check_digest(digest)}"
        return self._client(job).get_blob_client(name)

    def create(self, job: str) -> None:
        """Create the job's container (nothing when it exists)."""
        from azure.core.exceptions import ResourceExistsError

        try:
            self.service.create_container(self.container(job))
        except ResourceExistsError:
            pass

    def put(self, job: str, session: str, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest`` (the job's container is created when missing)."""
        from azure.core.exceptions import AzureError

        try:
            self.create(job)
            self._blob(job, session, digest).upload_blob(data, overwrite=True)
        except AzureError as exc:
            raise PayloadStoreError(f"cannot store payload {digest[:12]}: {exc}") from exc

    def get(self, job: str, session: str, digest: str) -> bytes:
        """The bytes stored under ``digest``; ``PayloadMissingError`` when there are none."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return self._blob(job, session, digest).download_blob().readall()
        except ResourceNotFoundError:
            raise _missing(digest, job, session) from None
        except AzureError as exc:
            raise PayloadStoreError(f"cannot read payload {digest[:12]}: {exc}") from exc

    def delete(self, job: str, session: str, digests: Iterable[str]) -> None:
        """Delete these payloads (those already gone are skipped)."""
        from azure.core.exceptions import ResourceNotFoundError

        for digest in digests:
            try:
                self._blob(job, session, digest).delete_blob()
            except ResourceNotFoundError:
                pass

    def _names(self, job: str, prefix: str | None = None) -> list[Any]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return list(self._client(job).list_blobs(name_starts_with=prefix))
        except ResourceNotFoundError:
            return []

    def drop_session(self, job: str, session: str) -> None:
        """Delete everything stored for one session."""
        client = self._client(job)
        names = [b.name for b in self._names(job, folder_name(session) + "/")]
        for start in range(0, len(names), 256):
            client.delete_blobs(*names[start : start + 256])

    def drop_job(self, job: str) -> None:
        """Delete the job's container."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.service.delete_container(self.container(job))
        except ResourceNotFoundError:
            pass

    def sweep(self, job: str, ttl: float = DEFAULT_TTL, now: float | None = None) -> int:
        """Delete the job's session spaces untouched for ``ttl`` seconds; how many."""
        cutoff = (time.time() if now is None else now) - ttl
        newest: dict[str, float] = {}
        for blob in self._names(job):
            space = blob.name.partition("/")[0]
            newest[space] = max(newest.get(space, 0.0), blob.last_modified.timestamp())
        stale = [space for space, touched in newest.items() if touched < cutoff]
        client = self._client(job)
        for space in stale:
            names = [b.name for b in self._names(job, space + "/")]
            for start in range(0, len(names), 256):
                client.delete_blobs(*names[start : start + 256])
        return len(stale)


class ContainerSasStore(BlobStore):
    """One job's container, reached with a container-scoped SAS (read, write, delete).

    What an Azure engine without an identity gets: the orchestrator creates the job's
    container, signs a SAS for it alone and stages it as a file with the engine's other
    credentials. The file is read when the store is first used; the store serves only
    the job whose container the SAS names.

    Args:
        path: the file holding the container's URL with the SAS query.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(None)
        self.path = Path(path)
        self._container: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        with self._lock:
            if self._container is None:
                try:
                    url = self.path.read_text().strip()
                except OSError as exc:
                    raise PayloadStoreError(
                        f"cannot read the payload store's credential file {self.path}: {exc}"
                    ) from None
                if not url.startswith(("https://", "http://")) or "sig=" not in url:
                    raise PayloadStoreError(f"{self.path} does not hold a container URL with a SAS")
                from azure.storage.blob import ContainerClient

                self._container = ContainerClient.from_container_url(url)
            return self._container

    def container(self, job: str) -> str:
        """The SAS's container, when it is ``job``'s (else ``PayloadStoreError``)."""
        name = self._open().container_name
        if not name.endswith("-p-" + super().container(job).rpartition("-p-")[2]):
            raise PayloadStoreError(
                f"this store's SAS is for another job's container, not job {job!r}'s"
            )
        return name

    def _client(self, job: str) -> Any:
        self.container(job)
        return self._container

    def create(self, job: str) -> None:
        """Nothing: the orchestrator created the container (the SAS cannot)."""
        self.container(job)

    def drop_job(self, job: str) -> None:
        """Refused: the orchestrator deletes the job's container."""
        raise PayloadStoreError("an engine's payload store cannot delete the job's container")


class MemoryStore:
    """Payloads as bytes in this process: for ``memory://``, whose engines are threads here.

    Keyed like the others (job, session space, digest), with the same deletion rules.
    It serves a job while a session of it is open in this process (``open_job`` /
    ``close_job``, counted): engine threads reach it only for those jobs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spaces: dict[tuple[str, str], dict[str, tuple[bytes, float]]] = {}
        self._open: dict[str, int] = {}

    def open_job(self, job: str) -> None:
        """A session of ``job`` opened in this process: serve the job."""
        with self._lock:
            self._open[job] = self._open.get(job, 0) + 1

    def close_job(self, job: str) -> None:
        """A session of ``job`` closed: stop serving it when it was the last."""
        with self._lock:
            left = self._open.get(job, 0) - 1
            if left > 0:
                self._open[job] = left
            else:
                self._open.pop(job, None)

    def serves(self, job: str) -> bool:
        """Whether a session of ``job`` is open in this process."""
        return job in self._open

    def put(self, job: str, session: str, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest`` (a copy already there is kept, and touched)."""
        check_digest(digest)
        with self._lock:
            space = self._spaces.setdefault((job, session), {})
            old = space.get(digest)
            space[digest] = (data if old is None else old[0], time.time())

    def get(self, job: str, session: str, digest: str) -> bytes:
        """The bytes stored under ``digest``; ``PayloadMissingError`` when there are none."""
        check_digest(digest)
        with self._lock:
            entry = self._spaces.get((job, session), {}).get(digest)
        if entry is None:
            raise _missing(digest, job, session)
        return entry[0]

    def delete(self, job: str, session: str, digests: Iterable[str]) -> None:
        """Delete these payloads (those already gone are skipped)."""
        with self._lock:
            space = self._spaces.get((job, session))
            for digest in digests:
                if space is not None:
                    space.pop(check_digest(digest), None)
            if space is not None and not space:
                del self._spaces[(job, session)]

    def drop_session(self, job: str, session: str) -> None:
        """Delete everything stored for one session."""
        with self._lock:
            self._spaces.pop((job, session), None)

    def drop_job(self, job: str) -> None:
        """Delete everything stored for one job."""
        with self._lock:
            for key in [key for key in self._spaces if key[0] == job]:
                del self._spaces[key]

    def sweep(self, job: str, ttl: float = DEFAULT_TTL, now: float | None = None) -> int:
        """Delete the job's session spaces untouched for ``ttl`` seconds; how many."""
        cutoff = (time.time() if now is None else now) - ttl
        with self._lock:
            stale = [
                key
                for key, space in self._spaces.items()
                if key[0] == job and max(touched for _, touched in space.values()) < cutoff
            ]
            for key in stale:
                del self._spaces[key]
        return len(stale)

    def names(self) -> list[tuple[str, str, str]]:
        """Every payload held: ``(job, session space, digest)``."""
        with self._lock:
            return [(job, s, d) for (job, s), space in self._spaces.items() for d in space]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(space) for space in self._spaces.values())


def open_store(spec: str) -> DirectoryStore | BlobStore:
    """The store a spec names: a Blob account URL (``https://ACCOUNT.blob...``, read with
    ``DefaultAzureCredential``, e.g. the nodes' managed identity), ``sas-file:PATH`` (a
    file holding one job's container URL with a SAS: ``ContainerSasStore``), else a
    directory."""
    if spec.startswith(SAS_FILE):
        return ContainerSasStore(spec[len(SAS_FILE) :])
    if spec.startswith(("https://", "http://")):
        from azure.identity import DefaultAzureCredential
        from azure.storage.blob import BlobServiceClient

        return BlobStore(BlobServiceClient(spec, credential=DefaultAzureCredential()))
    return DirectoryStore(spec)
