"""The prototype's ``JobManager``: a ``Session`` that prototype drivers run unchanged.

On top of the session it keeps the prototype's contract:

* ``submit_task(task_id, command, params)`` splits a ``params`` string on
  whitespace, as the prototype did, and passes the words as the task's arguments;
* ``get_results()`` returns the prototype's dicts (``result``, ``id``, ``jobid``,
  ``taskid``, ``error``);
* a task id may be used again once its earlier task has finished (a ``Session``
  refuses any re-use).

Re-use is safe because each submission travels as its own task: ``0`` is sent as
``0#1``, its second use as ``0#2``, and so on. A late duplicate of the first
submission's result names ``0#1``, which is finished, so it is dropped like any
duplicate and never answers ``0#2``. Results, result callbacks, iteration and
``cancel`` speak the caller's ids; a task future's ``task_id`` (and a
``TaskError``'s) is the submission's wire id.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from .results import Result, TaskFuture
from .session import Session

__all__ = ["NO_ERROR", "JobManager", "prototype_result"]

#: The prototype's ``error`` of a task that succeeded.
NO_ERROR = "no error"
#: Between a caller's task id and the submission number in a wire task id.
_SUBMISSION = "#"
#: The error type of a ``do_action`` that returned an error (``engine.tasks``).
_REPORTED = "TaskReportedError"


def _caller_task_id(wire_id: str) -> str:
    head, separator, _ = wire_id.rpartition(_SUBMISSION)
    return head if separator else wire_id


def prototype_result(result: Result, job: str) -> dict[str, Any]:
    """A ``Result`` as the prototype's dict.

    ``error`` is ``"no error"`` on success, the text a ``do_action`` returned as its
    error, or ``"TYPE: message"`` for any other failure (``"task cancelled"``,
    ``"task expired"`` for those outcomes); ``result`` is None unless the task succeeded.
    """
    if result.ok:
        error = NO_ERROR
    elif result.error is None:
        error = f"task {result.status}"
    elif result.error.type == _REPORTED:
        error = result.error.message
    else:
        error = f"{result.error.type}: {result.error.message}"
    return {
        "result": result.value,
        "id": result.engine,
        "jobid": job,
        "taskid": result.task_id,
        "error": error,
    }


class JobManager(Session):
    """The seed's ``JobManager``: prototype driver scripts run on it unchanged.

    ``JobManager("client_1", job_id)`` opens a session named ``client_1`` on ``job_id``,
    connecting to ``pool_or_url`` or, when omitted, to ``RTBATCH_TRANSPORT`` / the
    ``[transport] url`` of ``rtbatch.toml``. See the module's docstring for what
    differs from a ``Session``.
    """

    def __init__(
        self, client: str, job_id: str | None = None, pool_or_url: Any = None, **options: Any
    ) -> None:
        if pool_or_url is None:
            pool_or_url = _configured_transport_url()
        self._submissions = itertools.count(1)
        self._caller_ids = itertools.count(1)  # ids for submissions without one
        # caller's task id -> wire id of its latest use, while that task is outstanding
        self._latest: dict[str, str] = {}
        self._reuse = threading.Lock()
        super().__init__(pool_or_url, job=job_id, name=client, **options)

    # ------------------------------------------------------------------ the prototype's calls
    def submit_task(self, task_id: Any, command: str, params: Any = None) -> TaskFuture:
        """Seed: ``submit_task(task_id, command, params)``.

        A string ``params`` is split on whitespace (as the prototype did), a list or
        tuple is spread, None means no arguments, anything else is one argument.

        Raises:
            ValueError: ``task_id``'s earlier task has not finished yet.
        """
        if isinstance(params, str):
            args: list[Any] = params.split()
        elif isinstance(params, list | tuple):
            args = list(params)
        else:
            args = [] if params is None else [params]
        return self.submit(command, *args, task_id=str(task_id))

    def get_results(self) -> list[dict[str, Any]]:
        """Seed: the results returned since the last call, as the prototype's dicts.

        Each dict has ``result``, ``id`` (the engine), ``jobid``, ``taskid`` and
        ``error`` (``"no error"`` on success; see ``prototype_result``).
        """
        return [prototype_result(result, self.job) for result in self.results()]

    def close_job(self) -> None:
        """Seed: stop listening (which now works) and release the connection."""
        self.close()

    # ------------------------------------------------------------------ ids: caller's <-> wire
    def submit(
        self, command: str, *args: Any, task_id: str | None = None, **options: Any
    ) -> TaskFuture:
        """``Session.submit``, where a task id may be re-used once its task has finished.

        Raises:
            ValueError: ``task_id``'s earlier task has not finished yet.
        """
        caller_id = str(next(self._caller_ids)) if task_id is None else str(task_id)
        with self._reuse:
            earlier = self._latest.get(caller_id)
            if earlier is not None:
                with self._lock:
                    running = earlier in self._futures
                if running:
                    raise ValueError(
                        f"task id {caller_id!r} is still running in this job manager: "
                        "re-use it once its result has arrived"
                    )
            wire_id = f"{caller_id}{_SUBMISSION}{next(self._submissions)}"
            future = super().submit(command, *args, task_id=wire_id, **options)
            self._latest[caller_id] = wire_id
        future.add_done_callback(lambda _: self._finished(caller_id, wire_id))
        return future

    def _finished(self, caller_id: str, wire_id: str) -> None:
        """A submission finished: forget its caller id unless it was re-used since."""
        with self._reuse:
            if self._latest.get(caller_id) == wire_id:
                del self._latest[caller_id]

    def cancel(self, task_ids: str | Iterable[str | concurrent.futures.Future]) -> int:
        """``Session.cancel``; a task id names the latest task submitted with it."""
        if isinstance(task_ids, str):
            task_ids = [task_ids]
        wire_ids: list[str | concurrent.futures.Future] = [
            t if isinstance(t, concurrent.futures.Future) else self._latest.get(str(t), str(t))
            for t in task_ids
        ]
        return super().cancel(wire_ids)

    def cancel_all(self) -> int:
        """Cancel every task that has no result yet; return how many."""
        with self._lock:
            wire_ids = list(self._futures)
        return super().cancel(wire_ids)

    def results(self) -> list[Result]:
        """``Session.results``, with the caller's task ids."""
        return [self._as_caller(result) for result in super().results()]

    def __iter__(self) -> Iterator[Result]:
        """``Session.__iter__``, with the caller's task ids."""
        for result in super().__iter__():
            yield self._as_caller(result)

    def add_result_callback(self, callback: Callable[[Result], None]) -> None:
        """``Session.add_result_callback``; the callback sees the caller's task ids."""
        super().add_result_callback(lambda result: callback(self._as_caller(result)))

    @staticmethod
    def _as_caller(result: Result) -> Result:
        return attrs.evolve(result, task_id=_caller_task_id(result.task_id))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.outstanding} outstanding"
        return f"<JobManager {self.id!r} job={self.job!r} {state}>"


def _configured_transport_url() -> str:
    """The transport URL from ``RTBATCH_TRANSPORT`` or ``rtbatch.toml`` (``[transport] url``)."""
    from realtime_batch.config import Config

    url = Config.load()["transport.url"]
    if not url or url.rstrip("/").endswith(":0"):
        raise ValueError(
            "JobManager needs a running transport: pass pool_or_url=... (e.g. a LocalPool), "
            "set RTBATCH_TRANSPORT, or set [transport] url in rtbatch.toml"
        )
    return url
