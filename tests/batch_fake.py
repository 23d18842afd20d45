"""A local fake of the Azure Batch REST endpoints realtime-batch calls.

Driven through the real ``azure-batch`` 15.x client: shared-key auth over HTTP
(the signature is verified), or bearer tokens over HTTPS with a self-signed
certificate (the ``DefaultAzureCredential`` path; azure-core refuses bearer tokens
over plain HTTP). Every request is recorded (method, path, JSON body) so tests can
assert what would reach a real account. Optionally a :class:`NodeSimulator`
"runs" the pool: it downloads resource files through their SAS URLs and starts the
engine tasks' command lines as local processes (see ``tests/azure/node_sim.py``).

Run alone::

    python tests/batch_fake.py --port 8090 [--account NAME --key BASE64] [--record FILE]

``--record FILE`` appends every request served (method, path, query, body) to FILE
as JSON lines, so a run can be inspected afterwards.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

__all__ = ["BatchFake", "FakeClock", "Recorded", "sign_shared_key", "vcpus"]

logger = logging.getLogger("batch_fake")

DEFAULT_ACCOUNT = "fakebatch"
DEFAULT_KEY = base64.b64encode(b"fake-batch-account-key-0123456789").decode()
_SIGNED_HEADERS = [
    "content-encoding", "content-language", "content-length", "content-md5", "content-type",
    "date", "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range",
]  # fmt: skip


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def sign_shared_key(method: str, url: str, headers: dict[str, str], account: str, key: str) -> str:
    """The Batch shared-key signature of a request (as the service computes it)."""
    lower = {k.lower(): v for k, v in headers.items() if v}
    if method not in ("GET", "HEAD") and "content-length" not in lower:
        lower["content-length"] = "0"
    text = method + "\n" + "\n".join(lower.get(h, "") for h in _SIGNED_HEADERS) + "\n"
    for name in sorted(k for k in lower if "ocp-" in k):
        text += f"{name}:{lower[name]}\n"
    parsed = urlparse(url)
    text += f"/{account}{parsed.path}"
    query = parse_qs(parsed.query)
    for name in sorted(query):
        if query[name][0]:
            text += f"\n{name}:{query[name][0]}"
    mac = hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


class Recorded(dict):
    """One recorded request: ``method``, ``path``, ``query``, ``body`` (parsed JSON)."""


class FakeClock:
    """The fake's time, in seconds: moved by :meth:`advance`, and by ``step`` per request.

    Nothing in the fake waits on real time: allocation, start tasks and job deletion
    finish when this clock has moved far enough. ``step`` > 0 lets a client that polls
    (``wait_ready``, the SDK's pollers) make progress on its own; a test that wants
    to hold the service still uses ``step=0`` and calls :meth:`advance`.
    """

    def __init__(self, step: float = 1.0) -> None:
        self.seconds = 0.0
        self.step = step
        self.origin = dt.datetime.now(dt.timezone.utc)

    def tick(self) -> None:
        self.seconds += self.step

    def advance(self, seconds: float) -> None:
        self.seconds += seconds

    def wall(self) -> dt.datetime:
        """The fake's wall-clock time (real start time + fake seconds)."""
        return self.origin + dt.timedelta(seconds=self.seconds)


def vcpus(vm_size: str) -> int:
    """vCPUs of an Azure VM size name (``Standard_D2s_v5`` -> 2); 1 when unknown."""
    found = re.match(r"(?i)standard_[a-z]+?(\d+)", vm_size or "")
    return int(found.group(1)) if found else 1


def _duration(text: str | None, default: float) -> float:
    """Seconds of an ISO 8601 duration such as ``PT15M`` (minutes/hours/seconds only)."""
    found = re.fullmatch(r"P(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?", text or "")
    if not text or not found:
        return default
    hours, minutes, seconds = (float(g or 0) for g in found.groups())
    return hours * 3600 + minutes * 60 + seconds


class BatchFake:
    """In-memory Batch account state behind an HTTP(S) server.

    Rules it enforces the way the service does (see docs/azure.md for the list):
    allocation goes ``resizing`` -> ``steady`` over (fake) time and a resize or node
    removal while resizing gets 409 ``PoolResizing``; ``taskcompletion`` deallocation
    waits for running tasks, ``requeue``/``terminate`` do not; jobs pass through
    ``deleting``; ``taskSlotsPerNode`` is capped at min(4 x vCPUs, 256); a pool with a
    subnet needs Entra ID auth; each node runs its start task (downloading its
    resource files *then*) when it joins, reboots, is reimaged or recovers from
    preemption, and each job's preparation task before the job's first task there.

    Args:
        account: account name for shared-key auth.
        key: base64 account key.
        token: expected bearer token (HTTPS mode); None = shared key only.
        on_task: called ``on_task(fake, pool_id, job_id, task)`` when a task starts
            running on a node (``task["nodeInfo"]["nodeId"]``).
        clock: the fake's clock (default: one second per request).
        auto_storage: name of the storage account linked to the Batch account
            (``autoStorageContainerName`` resource files work only with one).
        allocation_seconds / boot_seconds / job_delete_seconds: fake durations.
        record: a file that gets every request as one JSON line.
    """

    def __init__(
        self,
        account: str = DEFAULT_ACCOUNT,
        key: str = DEFAULT_KEY,
        *,
        token: str | None = None,
        on_task: Callable[[BatchFake, str, str, dict[str, Any]], None] | None = None,
        clock: FakeClock | None = None,
        auto_storage: str | None = None,
        allocation_seconds: float = 3.0,
        boot_seconds: float = 2.0,
        job_delete_seconds: float = 2.0,
        record: str | os.PathLike[str] | None = None,
    ) -> None:
        self.account, self.key, self.token = account, key, token
        self.on_task = on_task
        self.clock = clock or FakeClock()
        self.auto_storage = auto_storage
        self.allocation_seconds = allocation_seconds
        self.boot_seconds = boot_seconds
        self.job_delete_seconds = job_delete_seconds
        self.pools: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, list[dict[str, Any]]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, dict[str, Any]]] = {}
        #: (node id, job id) -> job preparation outcome: None (ok) or the failure message
        self.prepared: dict[tuple[str, str], str | None] = {}
        self.requests: list[Recorded] = []
        self.lock = threading.RLock()
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._record = open(record, "a", encoding="utf-8") if record else None  # noqa: SIM115
        self._node_numbers = itertools.count()

    # --------------------------------------------------------------- server
    def start(self, port: int = 0, ssl_context: Any = None) -> str:
        """Serve on 127.0.0.1 in a thread; return the endpoint URL."""
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self.server.daemon_threads = True
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        scheme = "https" if ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self._record is not None:
            self._record.close()
            self._record = None

    def record(self, request: Recorded) -> None:
        """Keep one request (and write it to the record file, if any)."""
        with self.lock:
            self.requests.append(request)
            if self._record is not None:
                line = {k: request[k] for k in ("method", "path", "query", "body")}
                self._record.write(json.dumps(line) + "\n")
                self._record.flush()

    # ---------------------------------------------------------------- state
    def bodies(self, method: str, pattern: str) -> list[Any]:
        """JSON bodies of recorded requests whose path matches ``pattern``."""
        rx = re.compile(pattern)
        return [
            r["body"] for r in self.requests if r["method"] == method and rx.fullmatch(r["path"])
        ]

    def set_task_state(self, job_id: str, task_id: str, state: str, exit_code: int | None = None):
        """Move a task to ``state`` (e.g. ``completed`` with an exit code)."""
        with self.lock:
            task = self.tasks.get(job_id, {}).get(task_id)
            if task is None:  # deleted meanwhile
                return
            task["state"] = state
            info = task.setdefault("executionInfo", {"retryCount": 0, "requeueCount": 0})
            if state == "running":
                info.setdefault("startTime", _now())
            if state == "completed":
                info["endTime"] = _now()
                info["exitCode"] = exit_code
                info["result"] = "success" if exit_code == 0 else "failure"
            self._settle()

    def advance(self, seconds: float) -> None:
        """Move the fake's clock and let the service catch up."""
        with self.lock:
            self.clock.advance(seconds)
            self._settle()

    def node(self, node_id: str) -> dict[str, Any]:
        """A node by id (any pool)."""
        for nodes in self.nodes.values():
            for node in nodes:
                if node["id"] == node_id:
                    return node
        raise KeyError(node_id)

    def preempt(self, node_id: str) -> None:
        """Spot preemption: the node is ``preempted``; its running tasks are requeued."""
        with self.lock:
            node = self.node(node_id)
            node["state"] = "preempted"
            self._requeue_tasks_of(node_id)
            self._settle()

    def restart_node(self, node_id: str, why: str = "reboot") -> None:
        """Reboot, reimage or spot recovery: tasks requeued, start task runs again."""
        with self.lock:
            node = self.node(node_id)
            self._requeue_tasks_of(node_id)
            node["state"] = {"reboot": "rebooting", "reimage": "reimaging"}.get(why, "starting")
            node["_bootAt"] = self.clock.seconds + self.boot_seconds
            for key in [k for k in self.prepared if k[0] == node_id]:
                del self.prepared[key]  # the job preparation runs again too
            self._settle()

    # ------------------------------------------------------------ the service
    def _new_node(self, pool: dict[str, Any], dedicated: bool, since: float) -> dict[str, Any]:
        number = next(self._node_numbers)
        return {
            "id": f"tvmps_{pool['id']}_{'d' if dedicated else 'p'}{number}",
            "state": "starting", "schedulingState": "enabled", "isDedicated": dedicated,
            "vmSize": pool.get("vmSize"), "ipAddress": f"10.0.0.{4 + number % 250}",
            "_bootAt": since + self.boot_seconds,
        }  # fmt: skip

    def _resource_problem(self, pool: dict[str, Any], resource: dict[str, Any]) -> str | None:
        """Why a node could not download ``resource`` now (None: it can)."""
        if resource.get("autoStorageContainerName"):
            if not self.auto_storage:
                return "the Batch account has no auto-storage account linked"
            return None
        if resource.get("identityReference"):
            wanted = resource["identityReference"].get("resourceId")
            ids = (pool.get("identity") or {}).get("userAssignedIdentities") or []
            if not any(i.get("resourceId") == wanted for i in ids):
                return f"identity {wanted} is not assigned to the pool"
            return None
        url = resource.get("httpUrl") or resource.get("storageContainerUrl") or ""
        query = parse_qs(urlparse(url).query)
        if "sig" not in query:
            return f"{url.split('?')[0]}: private blob and no SAS (403)"
        expiry = dt.datetime.fromisoformat(
            query.get("se", ["9999-12-31"])[0].replace("Z", "+00:00")
        )
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=dt.timezone.utc)
        if expiry <= self.clock.wall():
            return f"{url.split('?')[0]}: SAS expired at {expiry.isoformat()} (403)"
        return None

    def _files_problem(self, pool: dict[str, Any], resources: list[dict[str, Any]]) -> str | None:
        for resource in resources:
            problem = self._resource_problem(pool, resource)
            if problem:
                return problem
        return None

    def _boot(self, pool: dict[str, Any], node: dict[str, Any]) -> None:
        """The node runs its start task now (and downloads its resource files now)."""
        node.pop("_bootAt", None)
        start = pool.get("startTask")
        if not start:
            node["state"] = "idle"
            return
        problem = self._files_problem(pool, start.get("resourceFiles", []))
        info = {"state": "completed", "retryCount": 0, "startTime": _now(), "endTime": _now()}
        if problem:
            failure = {"category": "usererror", "code": "BlobAccessDenied", "message": problem}
            info.update(result="failure", failureInfo=failure)
            node["state"] = "starttaskfailed" if start.get("waitForSuccess") else "idle"
        else:
            info.update(result="success", exitCode=0)
            node["state"] = "idle"
        node["startTaskInfo"] = info

    def _requeue_tasks_of(self, node_id: str, terminate: bool = False) -> None:
        for tasks in self.tasks.values():
            for task in tasks.values():
                if task["state"] == "running" and task.get("nodeInfo", {}).get("nodeId") == node_id:
                    task.pop("nodeInfo", None)
                    if terminate:
                        self._end_task(task, "completed", exit_code=-1)
                    else:
                        task["state"] = "active"
                        task["executionInfo"]["requeueCount"] += 1

    def _end_task(self, task: dict[str, Any], state: str, exit_code: int) -> None:
        task["state"] = state
        info = task["executionInfo"]
        info.update(endTime=_now(), exitCode=exit_code, result="failure")

    def _running_on(self, node_id: str) -> int:
        return sum(
            t["state"] == "running" and t.get("nodeInfo", {}).get("nodeId") == node_id
            for tasks in self.tasks.values()
            for t in tasks.values()
        )

    def _settle(self) -> None:
        """Let every pool and job move on to where the fake clock says they are."""
        now = self.clock.seconds
        for job_id, job in list(self.jobs.items()):
            if job["state"] == "deleting" and now >= job["_goneAt"]:
                del self.jobs[job_id]
                self.tasks.pop(job_id, None)
        for pool in self.pools.values():
            nodes = self.nodes[pool["id"]]
            resize = pool.get("_resize")
            if resize and now >= resize["at"]:
                self._apply_resize(pool, resize)
                resize = None
            for node in nodes:
                if "_bootAt" in node and now >= node["_bootAt"]:
                    self._boot(pool, node)
            leaving = [n for n in nodes if n["state"] == "leavingpool"]
            for node in leaving:
                if not self._running_on(node["id"]):
                    nodes.remove(node)
            if pool["allocationState"] == "resizing" and resize is None and not leaving:
                pool["allocationState"] = "steady"
            elif leaving and now >= pool.get("_resizeDeadline", float("inf")):
                for node in leaving:  # resize timed out: the nodes stay
                    node["state"] = "running"
                why = "nodes still running tasks at the resize timeout"
                pool["resizeErrors"] = [_error("ResizeTimedOut", why)]
                pool["allocationState"] = "steady"
            pool["currentDedicatedNodes"] = sum(n["isDedicated"] for n in nodes)
            pool["currentLowPriorityNodes"] = sum(not n["isDedicated"] for n in nodes)
            self._schedule(pool)

    def _apply_resize(self, pool: dict[str, Any], resize: dict[str, Any]) -> None:
        pool.pop("_resize")
        nodes = self.nodes[pool["id"]]
        option = resize["option"]
        remove = [n for n in nodes if n["id"] in resize["remove"]]
        for dedicated, key in ((True, "targetDedicatedNodes"), (False, "targetLowPriorityNodes")):
            kind = [n for n in nodes if n["isDedicated"] is dedicated and n not in remove]
            want = pool.get(key) or 0
            while len(kind) < want:
                kind.append(self._new_node(pool, dedicated, resize["at"]))
                nodes.append(kind[-1])
            if len(kind) > want:  # the service picks: idle nodes first, then the newest
                kind.sort(key=lambda n: (self._running_on(n["id"]) > 0, -nodes.index(n)))
                remove += kind[: len(kind) - want]
        for node in remove:
            if option in ("taskcompletion", "retaineddata") and self._running_on(node["id"]):
                node["state"] = "leavingpool"
                continue
            self._requeue_tasks_of(node["id"], terminate=option == "terminate")
            nodes.remove(node)

    def _schedule(self, pool: dict[str, Any]) -> None:
        """Put active tasks of the pool's jobs on nodes with free slots (``spread``)."""
        slots = pool.get("taskSlotsPerNode", 1)
        usable = [n for n in self.nodes[pool["id"]] if n["state"] in ("idle", "running")]
        for job_id, job in self.jobs.items():
            if job["state"] != "active" or job["poolInfo"]["poolId"] != pool["id"]:
                continue
            for task in self.tasks[job_id].values():
                if task["state"] != "active":
                    continue
                free = [
                    n for n in usable
                    if self._running_on(n["id"]) < slots and self._prepare(pool, n, job) is None
                ]  # fmt: skip
                if not free:
                    break
                node = min(free, key=lambda n: self._running_on(n["id"]))
                task["state"] = "running"
                task["nodeInfo"] = {"nodeId": node["id"], "poolId": pool["id"]}
                task["executionInfo"]["startTime"] = _now()
                if self.on_task is not None:
                    self.on_task(self, pool["id"], job_id, dict(task))
        for node in usable:
            node["state"] = "running" if self._running_on(node["id"]) else "idle"

    def _prepare(self, pool: dict[str, Any], node: dict[str, Any], job: dict[str, Any]):
        """The job preparation task on ``node`` (once); None when it succeeded."""
        key = (node["id"], job["id"])
        if key not in self.prepared:
            prep = job.get("jobPreparationTask") or {}
            self.prepared[key] = self._files_problem(pool, prep.get("resourceFiles", []))
        return self.prepared[key]

    # ------------------------------------------------------------- dispatch
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any, auth="key"):
        """Route one request; return (status, json body or None)."""
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        with self.lock:
            self.clock.tick()
            self._settle()
            route = _ROUTES.get((method, _shape(parts)))
            if route is None:
                return 404, _error("NotFound", f"no fake route for {method} {path}")
            if route is _create_pool:
                status, payload = route(self, parts, body, auth)
            else:
                status, payload = route(self, parts, body)
            self._settle()
            return status, _public(payload)


def _public(payload: Any) -> Any:
    """The payload without the fake's own bookkeeping (keys starting with ``_``)."""
    if isinstance(payload, dict):
        return {k: _public(v) for k, v in payload.items() if not k.startswith("_")}
    if isinstance(payload, list):
        return [_public(v) for v in payload]
    return payload


def _shape(parts: list[str]) -> str:
    names = {"pools", "jobs", "tasks", "nodes", "resize", "enableautoscale", "disableautoscale"}
    names |= {"updateproperties", "addtaskcollection", "terminate", "stopresize", "files"}
    names |= {"removenodes", "jobpreparationandreleasetaskstatus"}
    return "/".join(p if p in names else "*" for p in parts)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": {"lang": "en-US", "value": message}}


def _listing(items: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    return 200, {"value": items}


def _pool_or_404(fake: BatchFake, pool_id: str):
    pool = fake.pools.get(pool_id)
    return pool, (404, _error("PoolNotFound", f"pool {pool_id} does not exist"))


def _create_pool(fake: BatchFake, parts, body, auth="key"):
    if body["id"] in fake.pools:
        return 409, _error("PoolExists", "The specified pool already exists.")
    cap = min(4 * vcpus(body.get("vmSize", "")), 256)
    if body.get("taskSlotsPerNode", 1) > cap:
        return 400, _error(
            "InvalidPropertyValue",
            f"taskSlotsPerNode {body['taskSlotsPerNode']} exceeds min(4 x vCPUs, 256) = {cap} "
            f"for {body.get('vmSize')}",
        )
    if (body.get("networkConfiguration") or {}).get("subnetId") and auth == "key":
        return 403, _error(
            "OperationNotAllowedWithSharedKey",
            "a pool in a virtual network needs Microsoft Entra ID authentication",
        )
    pool = dict(body, state="active", allocationState="steady", creationTime=_now())
    pool.setdefault("taskSlotsPerNode", 1)
    pool["url"] = f"/pools/{body['id']}"
    fake.pools[body["id"]] = pool
    fake.nodes[body["id"]] = []
    return _start_resize(fake, pool, "requeue", [], pool.get("resizeTimeout"), 201)


def _start_resize(fake: BatchFake, pool, option, remove, timeout, status):
    pool["allocationState"] = "resizing"
    pool.pop("resizeErrors", None)
    pool["_resize"] = {"at": fake.clock.seconds + fake.allocation_seconds, "option": option,
                       "remove": list(remove)}  # fmt: skip
    pool["_resizeDeadline"] = fake.clock.seconds + _duration(timeout, 900.0)
    return status, None


def _get_pool(fake: BatchFake, parts, body):
    pool, missing = _pool_or_404(fake, parts[1])
    return (200, pool) if pool else missing


def _delete_pool(fake: BatchFake, parts, body):
    pool, missing = _pool_or_404(fake, parts[1])
    if not pool:
        return missing
    del fake.pools[parts[1]]
    fake.nodes.pop(parts[1], None)
    return 202, None


def _resizable(fake: BatchFake, parts):
    pool, missing = _pool_or_404(fake, parts[1])
    if not pool:
        return None, missing
    if pool.get("enableAutoScale"):
        return None, (409, _error("AutoScalingEnabled", "cannot resize an autoscale pool"))
    if pool["allocationState"] != "steady":
        return None, (409, _error("PoolResizing", "the pool is resizing: wait until steady"))
    return pool, None


def _resize_pool(fake: BatchFake, parts, body):
    pool, refused = _resizable(fake, parts)
    if refused:
        return refused
    for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        if key in body:
            pool[key] = body[key]
    option = body.get("nodeDeallocationOption") or "requeue"
    return _start_resize(fake, pool, option, [], body.get("resizeTimeout"), 202)


def _remove_nodes(fake: BatchFake, parts, body):
    pool, refused = _resizable(fake, parts)
    if refused:
        return refused
    nodes = {n["id"]: n for n in fake.nodes[pool["id"]]}
    unknown = [n for n in body["nodeList"] if n not in nodes]
    if unknown:
        return 404, _error("NodeNotFound", f"no such nodes: {unknown}")
    for node_id in body["nodeList"]:
        key = "targetDedicatedNodes" if nodes[node_id]["isDedicated"] else "targetLowPriorityNodes"
        pool[key] = max((pool.get(key) or 0) - 1, 0)
    option = body.get("nodeDeallocationOption") or "requeue"
    return _start_resize(fake, pool, option, body["nodeList"], body.get("resizeTimeout"), 202)


def _autoscale(fake: BatchFake, parts, body):
    pool, missing = _pool_or_404(fake, parts[1])
    if not pool:
        return missing
    pool.update(enableAutoScale=True, **body)
    return 200, None


def _update_properties(fake: BatchFake, parts, body):
    pool, missing = _pool_or_404(fake, parts[1])
    if not pool:
        return missing
    pool.update(body)
    return 204, None


def _list_nodes(fake: BatchFake, parts, body):
    pool, missing = _pool_or_404(fake, parts[1])
    return _listing(fake.nodes.get(parts[1], [])) if pool else missing


def _create_job(fake: BatchFake, parts, body):
    existing = fake.jobs.get(body["id"])
    if existing is not None and existing["state"] == "deleting":
        return 409, _error("JobBeingDeleted", "The specified job is being deleted.")
    if existing is not None:
        return 409, _error("JobExists", "The specified job already exists.")
    if body["poolInfo"]["poolId"] not in fake.pools:
        return 409, _error("PoolNotFound", "the job's pool does not exist")
    fake.jobs[body["id"]] = dict(body, state="active", creationTime=_now())
    fake.tasks[body["id"]] = {}
    return 201, None


def _get_job(fake: BatchFake, parts, body):
    job = fake.jobs.get(parts[1])
    return (200, job) if job else (404, _error("JobNotFound", f"job {parts[1]} does not exist"))


def _delete_job(fake: BatchFake, parts, body):
    job = fake.jobs.get(parts[1])
    if job is None:
        return 404, _error("JobNotFound", f"job {parts[1]} does not exist")
    if job["state"] != "deleting":
        job["state"] = "deleting"
        job["_goneAt"] = fake.clock.seconds + fake.job_delete_seconds
        for task in fake.tasks[parts[1]].values():  # the service stops the running tasks
            if task["state"] != "completed":
                task.pop("nodeInfo", None)
                fake._end_task(task, "completed", exit_code=-1)
    return 202, None


def _prep_status(fake: BatchFake, parts, body):
    if parts[1] not in fake.jobs:
        return 404, _error("JobNotFound", f"job {parts[1]} does not exist")
    rows = []
    for (node_id, job_id), problem in fake.prepared.items():
        if job_id != parts[1]:
            continue
        info = {"state": "completed", "startTime": _now(), "retryCount": 0,
                "result": "failure" if problem else "success", "exitCode": 0}  # fmt: skip
        if problem:
            info["failureInfo"] = {"category": "usererror", "code": "BlobAccessDenied",
                                   "message": problem}  # fmt: skip
        pool_id = fake.jobs[job_id]["poolInfo"]["poolId"]
        rows.append({"poolId": pool_id, "nodeId": node_id,
                     "jobPreparationTaskExecutionInfo": info})  # fmt: skip
    return _listing(rows)


def _add_task(fake: BatchFake, job_id: str, body: dict[str, Any]) -> tuple[int, Any]:
    job = fake.jobs.get(job_id)
    if job is None:
        return 404, _error("JobNotFound", f"job {job_id} does not exist")
    if job["state"] != "active":
        return 409, _error("JobNotActive", f"job {job_id} is {job['state']}")
    if body["id"] in fake.tasks[job_id]:
        return 409, _error("TaskExists", "The specified task already exists.")
    task = dict(body, state="active", creationTime=_now())
    task["executionInfo"] = {"retryCount": 0, "requeueCount": 0}
    fake.tasks[job_id][body["id"]] = task
    return 201, None


def _create_task(fake: BatchFake, parts, body):
    return _add_task(fake, parts[1], body)


def _add_collection(fake: BatchFake, parts, body):
    results = []
    for task in body["value"]:
        status, err = _add_task(fake, parts[1], task)
        if status == 201:
            results.append({"status": "success", "taskId": task["id"]})
        else:
            results.append({"status": "clienterror", "taskId": task["id"], "error": err})
    return 200, {"value": results}


def _list_tasks(fake: BatchFake, parts, body):
    if parts[1] not in fake.jobs:
        return 404, _error("JobNotFound", f"job {parts[1]} does not exist")
    return _listing(list(fake.tasks[parts[1]].values()))


def _delete_task(fake: BatchFake, parts, body):
    if fake.tasks.get(parts[1], {}).pop(parts[3], None) is None:
        return 404, _error("TaskNotFound", "no such task")
    return 200, None


_ROUTES: dict[tuple[str, str], Callable[..., tuple[int, Any]]] = {
    ("POST", "pools"): _create_pool,
    ("GET", "pools"): lambda fake, parts, body: _listing(list(fake.pools.values())),
    ("GET", "pools/*"): _get_pool,
    ("HEAD", "pools/*"): _get_pool,
    ("DELETE", "pools/*"): _delete_pool,
    ("POST", "pools/*/resize"): _resize_pool,
    ("POST", "pools/*/removenodes"): _remove_nodes,
    ("POST", "pools/*/enableautoscale"): _autoscale,
    ("POST", "pools/*/updateproperties"): _update_properties,
    ("GET", "pools/*/nodes"): _list_nodes,
    ("POST", "jobs"): _create_job,
    ("GET", "jobs"): lambda fake, parts, body: _listing(list(fake.jobs.values())),
    ("GET", "jobs/*"): _get_job,
    ("DELETE", "jobs/*"): _delete_job,
    ("GET", "jobs/*/jobpreparationandreleasetaskstatus"): _prep_status,
    ("POST", "jobs/*/tasks"): _create_task,
    ("GET", "jobs/*/tasks"): _list_tasks,
    ("DELETE", "jobs/*/tasks/*"): _delete_task,
    ("POST", "jobs/*/addtaskcollection"): _add_collection,
}


def _handler_for(fake: BatchFake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            logger.debug("%s " + fmt, self.address_string(), *args)

        def _auth_error(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                if fake.token is None or auth[7:] != fake.token:
                    return "invalid bearer token"
                return None
            prefix = f"SharedKey {fake.account}:"
            if not auth.startswith(prefix):
                return "missing or foreign SharedKey authorization"
            expected = sign_shared_key(
                self.command, self.path, dict(self.headers.items()), fake.account, fake.key
            )
            return None if hmac.compare_digest(auth[len(prefix) :], expected) else "bad signature"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            url = urlparse(self.path)
            fake.record(
                Recorded(method=self.command, path=url.path, query=parse_qs(url.query), body=body,
                         headers=dict(self.headers.items()))
            )  # fmt: skip
            problem = self._auth_error()
            if problem:
                status, payload = 401, _error("AuthenticationFailed", problem)
            else:
                auth = (
                    "token"
                    if self.headers.get("Authorization", "").startswith("Bearer ")
                    else "key"
                )
                status, payload = fake.handle(
                    self.command, url.path, parse_qs(url.query), body, auth=auth
                )
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("request-id", "fake")
            if data:
                self.send_header("Content-Type", "application/json; odata=minimalmetadata")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--account", default=DEFAULT_ACCOUNT)
    parser.add_argument("--key", default=DEFAULT_KEY)
    parser.add_argument("--record", default=None, help="Write every request as a JSON line.")
    parser.add_argument("--auto-storage", default=None, help="Linked auto-storage account name.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    fake = BatchFake(args.account, args.key, record=args.record, auto_storage=args.auto_storage)
    stopping = threading.Event()
    # before the ready line: a caller may stop the fake as soon as it has read it
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    url = fake.start(args.port)
    print(f"Batch fake on {url} (account {args.account}, key {args.key}); Ctrl-C stops", flush=True)
    try:
        stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()  # closes the record file


if __name__ == "__main__":
    main()
