"""Large values by reference: the payload store, and the offload and resolve rules.

A task body above the threshold (below the transport's message limit) keeps its
largest arguments in the job's payload store and carries references instead; the
engine fetches them before the task runs. A result above the threshold goes the same
way, and the client fetches it before handing it out. A reference
(``realtime_batch.values.PayloadRef``) names only the SHA-256 of the packed value:

* it is checked against a strict pattern (64 lowercase hex digits) while decoding, so
  a message cannot choose where a file goes or is read from;
* it is looked up only in the store of the task's own job and session
  (``ROOT/JOB/SESSION_KEY/DIGEST``: the session's key, the hash of its secret, which
  a forger naming another session cannot know; a name ``NAME`` does not allow is
  hashed, ``folder_name``), so a reference to another job's or session's payload is
  simply missing;
* what is read is hashed again: a corrupt payload (``PayloadCorruptError``) or a
  missing one (``PayloadMissingError``) is the task's error, never a wrong value.

The client deletes a task's argument payloads when its result is taken, and a result
payload once read; ``close()`` removes the session's directory, deleting the job removes
the job's, and sessions older than ``DEFAULT_TTL`` are swept when a session opens.
Stores: ``DirectoryStore`` (the emulated nodes' shared disk; ``LocalPool`` makes one),
``BlobStore`` (Azure), and for ``memory://`` the process's ``MemoryStore``
(``memory_store``): its engines are threads of the client's process, and reach it for
the jobs of the sessions open here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .protocol import (
    ErrorInfo,
    ResultRecord,
    TaskRecord,
    encode_result,
    encode_task,
    encode_value,
    replace,
)
from .transport.payload_store import (
    DEFAULT_TTL,
    SAS_FILE,
    BlobStore,
    ContainerSasStore,
    DirectoryStore,
    MemoryStore,
    PayloadCorruptError,
    PayloadError,
    PayloadMissingError,
    PayloadStoreError,
    check_digest,
    folder_name,
    open_store,
)
from .values import PayloadRef, unpack

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_TTL",
    "ENV_STORE",
    "SAS_FILE",
    "BlobStore",
    "ContainerSasStore",
    "DirectoryStore",
    "MemoryStore",
    "PayloadCorruptError",
    "PayloadError",
    "PayloadMissingError",
    "PayloadStoreError",
    "Payloads",
    "SessionPayloads",
    "check_digest",
    "engine_payloads",
    "folder_name",
    "memory_store",
    "open_store",
    "payload_store_for",
    "space",
    "threshold_for",
]

logger = logging.getLogger(__name__)

#: the engines' and clients' payload store: a directory shared by them
ENV_STORE = "RTBATCH_PAYLOAD_STORE"
#: bodies above this many bytes offload their largest values (at most half the limit)
DEFAULT_THRESHOLD = 256 * 1024
#: values smaller than this stay in the message even when the body is too large
_MIN_OFFLOAD = 1024
Store = DirectoryStore | BlobStore | MemoryStore
_MEMORY = MemoryStore()
#: values that hold no payload reference (skipped when looking for one)
_LEAVES = frozenset({str, bytes, int, float, bool, type(None)})


def memory_store() -> MemoryStore:
    """This process's store for ``memory://`` pools and sessions (engines are threads here)."""
    return _MEMORY


def threshold_for(max_message_size: int) -> int:
    """The body size above which values are offloaded, for a transport's limit."""
    return min(DEFAULT_THRESHOLD, max_message_size // 2)


class Payloads:
    """The offload and resolve rules over one store (``None``: values stay in messages).

    Args:
        store: where large values go, or None.
        threshold: body size in bytes above which values are offloaded.
        local: a ``MemoryStore`` used first for the jobs it serves (an engine's rules:
            ``memory://`` engines are threads of the process whose sessions use it).
    """

    def __init__(
        self,
        store: Store | None,
        threshold: int = DEFAULT_THRESHOLD,
        local: MemoryStore | None = None,
    ) -> None:
        self.store = store
        self.threshold = threshold
        self.local = local

    def store_for(self, job: str) -> Store | None:
        """The store that holds ``job``'s payloads here (None: values stay in messages)."""
        if self.local is not None and self.local.serves(job):
            return self.local
        return self.store

    # -- offloading --------------------------------------------------------------------
    @staticmethod
    def _store(store: Store, job: str, session: str, data: bytes) -> PayloadRef:
        digest = hashlib.sha256(data).hexdigest()
        store.put(job, session, digest, data)
        return PayloadRef(digest, len(data))

    def _offload(
        self, store: Store, job: str, session: str, items: list[tuple[Any, Any]]
    ) -> dict[Any, Any]:
        """Store the values of ``(key, value)`` pairs large enough to matter; key -> ref.

        Each value is packed once, the packed bytes being what is stored.
        """
        packed = {}
        for key, value in items:
            flat = _flat_size(value)
            if flat and flat < _MIN_OFFLOAD:
                continue  # a short string or bytes: not worth a file
            packed[key] = _packed(value, "args")  # all checked before anything is stored
        return {
            key: self._store(store, job, session, data)
            for key, data in packed.items()
            if len(data) >= _MIN_OFFLOAD
        }

    def encode_task(self, task: TaskRecord) -> tuple[bytes, list[str]]:
        """A task's body, its large arguments offloaded; and the digests it stored."""
        store = self.store_for(task.job)
        if store is None:
            return encode_task(task), []
        flat = 0
        for value in task.args:
            flat += _flat_size(value)
        for value in task.kwargs.values():
            flat += _flat_size(value)
        if flat <= self.threshold:
            body = encode_task(task)  # encoded once when it fits (the usual case)
            if len(body) <= self.threshold:
                return body, []
        items = [*enumerate(task.args), *task.kwargs.items()]
        refs = self._offload(store, task.job, space(task), items)
        task = replace(
            task,
            args=[refs.get(i, a) for i, a in enumerate(task.args)],
            kwargs={k: refs.get(k, v) for k, v in task.kwargs.items()},
        )
        return encode_task(task), [ref.digest for ref in refs.values()]

    def encode_result(self, result: ResultRecord) -> bytes:
        """A result's body, its value offloaded when large (store failure: an error result)."""
        store = self.store_for(result.job)
        if store is None:
            return encode_result(result)
        if _flat_size(result.value) <= self.threshold:
            body = encode_result(result)
            if len(body) <= self.threshold:
                return body
        try:
            ref = self._store(store, result.job, space(result), _packed(result.value, "value"))
        except PayloadError as exc:
            return encode_result(_as_error(result, exc))
        return encode_result(replace(result, value=ref))

    # -- resolving ---------------------------------------------------------------------
    def fetch(self, job: str, session: str, ref: PayloadRef) -> Any:
        """The value a reference names, read from the job's own store and hash-checked."""
        store = self.store_for(job)
        if store is None:
            raise PayloadStoreError(
                f"a payload reference arrived but no payload store is set ({ENV_STORE})"
            )
        data = store.get(job, session, ref.digest)
        if hashlib.sha256(data).hexdigest() != ref.digest:
            raise PayloadCorruptError(
                f"payload {ref.digest} is corrupt: its content does not match its hash"
            )
        try:
            return unpack(data)
        except Exception as exc:  # hash matched but not a packed value: stored by a bug
            raise PayloadCorruptError(
                f"payload {ref.digest} is not a packed value: {exc}"
            ) from None

    def resolve_task(self, task: TaskRecord) -> TaskRecord:
        """``task`` with its referenced arguments fetched (itself when it has none).

        References stand at the top of ``args`` and ``kwargs`` (offloaded arguments) or
        anywhere inside lists, tuples and dict values (a workflow's inputs passed on by
        reference, ``SessionPayloads.passed_on``).

        Raises:
            PayloadError: a payload is missing, corrupt, or there is no store.
        """
        # A plain callable, not a closure calling itself: that one was a reference cycle
        # (function -> its cell -> function) holding the task, its values with it, until
        # the next garbage collection, ~50 tasks later in a worker (#20).
        value = _Fetcher(self, task.job, space(task))
        args = _resolved(task.args, value)
        kwargs = _resolved(task.kwargs, value)
        if args is task.args and kwargs is task.kwargs:
            return task
        return replace(task, args=args, kwargs=kwargs)


class _Fetcher:
    """``resolve_task``'s fetch: a reference's value, the references in it fetched too."""

    __slots__ = ("job", "payloads", "where")

    def __init__(self, payloads: Payloads, job: str, where: str) -> None:
        self.payloads = payloads
        self.job = job
        self.where = where

    def __call__(self, ref: PayloadRef) -> Any:
        return _resolved(self.payloads.fetch(self.job, self.where, ref), self)


def _resolved(item: Any, fetch: Callable[[PayloadRef], Any]) -> Any:
    """``item`` with every ``PayloadRef`` in it replaced by ``fetch(ref)``; ``item``
    itself when it holds none (no copy: the usual case costs one pass)."""
    kind = type(item)
    if kind is PayloadRef:
        return fetch(item)
    if kind is list or kind is tuple:
        out = None
        for index, each in enumerate(item):
            if type(each) in _LEAVES:
                continue
            new = _resolved(each, fetch)
            if new is not each:
                if out is None:
                    out = list(item)
                out[index] = new
        if out is None:
            return item
        return out if kind is list else tuple(out)
    if kind is dict:
        changed = {}
        for key, each in item.items():
            if type(each) in _LEAVES:
                continue
            new = _resolved(each, fetch)
            if new is not each:
                changed[key] = new
        return {**item, **changed} if changed else item
    return item


def space(record: TaskRecord | ResultRecord) -> str:
    """The store directory of a record's session: its ``session_key``, else its id.

    The key is the hash of the session's secret, which only the session and the
    engines (who alone read tasks) know: naming another session's id in a forged
    task does not reach that session's payloads.
    """
    return record.session_key or record.session


def _flat_size(value: Any) -> int:
    """The size of a ``str`` or bytes-like value (0 for others): a cheap lower bound."""
    kind = type(value)
    if kind is str or kind is bytes or kind is bytearray:
        return len(value)
    if kind is memoryview:
        return value.nbytes
    return 0


def _packed(value: Any, field: str) -> bytes:
    return encode_value(value, field)  # ProtocolError as encode_task/encode_result say it


def _as_error(result: ResultRecord, exc: Exception) -> ResultRecord:
    return replace(
        result, status="error", value=None, error=ErrorInfo(type(exc).__name__, str(exc))
    )


class SessionPayloads:
    """One session's side: offload at submit, resolve and delete when results are taken.

    A workflow's task waiting for inputs (``wait``) is handed the references of the
    inputs' results that came back by reference (``passed_on``) instead of their values:
    such a payload is then kept (counted like an argument payload of the waiting task)
    until the waiting task's result is taken (``release``) or it will not be sent
    (``drop``), so a large value is read once into the client and never written again.

    Args:
        payloads: the rules and store.
        job: the session's job.
        session: the session's directory in the store: its ``session_key`` (``space``).
    """

    def __init__(self, payloads: Payloads, job: str, session: str) -> None:
        self.payloads = payloads
        self.job = job
        self.session = session
        self._lock = threading.Lock()
        self._by_task: dict[str, list[str]] = {}
        self._users: dict[str, int] = {}  # digest -> tasks still needing it
        self._wanted: dict[str, set[str]] = {}  # input task -> the tasks waiting for it
        self._waiting: dict[str, list[str]] = {}  # waiting task -> its unfinished inputs
        self._passed: dict[str, dict[str, PayloadRef]] = {}  # waiting task -> input -> ref
        self._closed = False
        store = payloads.store
        if isinstance(store, MemoryStore):
            store.open_job(job)  # its engines (threads here) now reach it for this job
        if store is not None:
            swept = store.sweep(job)
            if swept:
                logger.info("swept %d expired payload directories of job %s", swept, job)

    @classmethod
    def open(cls, target: Any, job: str, session: str, max_message_size: int) -> SessionPayloads:
        """For a session on ``target``: its ``payload_store``, else ``$RTBATCH_PAYLOAD_STORE``.

        A ``memory://`` URL gets this process's ``memory_store()``.
        """
        store = getattr(target, "payload_store", None)
        if store is None and isinstance(target, str) and target.startswith("memory://"):
            store = memory_store()
        elif store is None and os.environ.get(ENV_STORE):
            store = open_store(os.environ[ENV_STORE])
        return cls(Payloads(store, threshold_for(max_message_size)), job, session)

    def encode_task(self, task: TaskRecord) -> bytes:
        """The task's body; the payloads it stored are kept until its result is taken."""
        body, digests = self.payloads.encode_task(task)
        if digests:
            with self._lock:
                self._by_task.setdefault(task.task, []).extend(digests)  # after passed_on's
                for digest in digests:
                    self._users[digest] = self._users.get(digest, 0) + 1
        return body

    def take_result(self, result: ResultRecord) -> ResultRecord:
        """``result`` with a referenced value fetched (and deleted); the task's payloads released.

        A referenced value that tasks ``wait`` for is kept for them (``passed_on``).
        A missing or corrupt payload makes it an error result naming the reason.
        """
        ref = result.value
        if type(ref) is not PayloadRef:
            if self._wanted:
                with self._lock:
                    self._wanted.pop(result.task, None)
            self.release(result.task)
            return result
        try:  # before releasing: an echoed argument is the same file
            value = self.payloads.fetch(self.job, self.session, ref)
        except PayloadError as exc:
            self.release(result.task)
            return _as_error(result, exc)
        if self._wanted:
            self._pass_on(result.task, ref)
        self.release(result.task)
        self._delete([ref.digest])  # unless kept for waiting tasks
        return replace(result, value=value)

    # -- workflows: inputs passed on by reference ---------------------------------------
    def wait(self, task_id: str, inputs: Iterable[str]) -> None:
        """Task ``task_id`` waits for these tasks: keep their results' payloads for it."""
        if self.payloads.store is None:
            return  # values stay in messages: nothing to pass on
        inputs = list(inputs)
        if not inputs:
            return
        with self._lock:
            if self._closed:
                return
            self._waiting[task_id] = inputs
            for input_id in inputs:
                self._wanted.setdefault(input_id, set()).add(task_id)

    def _pass_on(self, input_id: str, ref: PayloadRef) -> None:
        """``input_id``'s result is stored as ``ref``: keep it for the tasks waiting for it."""
        with self._lock:
            for task_id in self._wanted.pop(input_id, ()):
                self._passed.setdefault(task_id, {})[input_id] = ref
                self._by_task.setdefault(task_id, []).append(ref.digest)
                self._users[ref.digest] = self._users.get(ref.digest, 0) + 1

    def _stop_waiting(self, task_id: str) -> dict[str, PayloadRef]:
        with self._lock:
            for input_id in self._waiting.pop(task_id, ()):
                waiting = self._wanted.get(input_id)
                if waiting is not None:
                    waiting.discard(task_id)
                    if not waiting:
                        del self._wanted[input_id]
            return self._passed.pop(task_id, {})

    def passed_on(self, task_id: str) -> dict[str, PayloadRef]:
        """The waiting task is sent: its inputs' references by input task id.

        Those payloads stay until its result is taken (``release``), as its arguments'.
        """
        if task_id not in self._waiting:  # waited for nothing stored (the usual case)
            return {}
        return self._stop_waiting(task_id)

    def drop(self, task_id: str) -> None:
        """The waiting task will not be sent (cancelled, an input failed): let go of its inputs."""
        if task_id in self._waiting:
            self._stop_waiting(task_id)
        self.release(task_id)

    def release(self, task_id: str) -> None:
        """The task is done: delete the argument payloads no other task needs."""
        if task_id not in self._by_task:  # stored nothing (the usual case): no lock
            return
        with self._lock:
            digests = self._by_task.pop(task_id, None)
            if not digests:
                return
            unused = []
            for digest in digests:
                left = self._users[digest] - 1
                if left:
                    self._users[digest] = left
                else:
                    del self._users[digest]
                    unused.append(digest)
        self._delete(unused)

    def _delete(self, digests: list[str]) -> None:
        store = self.payloads.store
        if store is not None and digests:
            with self._lock:
                digests = [d for d in digests if d not in self._users]
            store.delete(self.job, self.session, digests)

    def close(self) -> None:
        """Delete everything this session stored or was sent (again: nothing more)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._by_task.clear()
            self._users.clear()
            self._wanted.clear()
            self._waiting.clear()
            self._passed.clear()
        store = self.payloads.store
        if store is not None:
            store.drop_session(self.job, self.session)
        if isinstance(store, MemoryStore):
            store.close_job(self.job)


def payload_store_for(
    scheme: str, pool_root: str | os.PathLike[str], engine_env: dict[str, str]
) -> DirectoryStore | MemoryStore:
    """A local pool's store: ``POOL_ROOT/payloads``, named to its engines in ``engine_env``.

    ``memory://`` gets this process's ``memory_store()``: its engines are threads here.
    """
    if scheme == "memory":
        return memory_store()
    store = DirectoryStore(Path(pool_root) / "payloads")
    engine_env[ENV_STORE] = str(store.root)
    return store


_engine_payloads: Payloads | None = None


def engine_payloads() -> Payloads:
    """The engine's rules: the store named by ``$RTBATCH_PAYLOAD_STORE`` (none if unset);
    for the jobs of ``memory://`` sessions open in this process, ``memory_store()``."""
    global _engine_payloads
    if _engine_payloads is None:
        root = os.environ.get(ENV_STORE)
        _engine_payloads = Payloads(open_store(root) if root else None, local=_MEMORY)
    return _engine_payloads
