"""A local fake of the Azure Batch REST endpoints realtime-batch calls.

Driven through the real ``azure-batch`` 15.x client: shared-key auth over HTTP
(the signature is verified), or bearer tokens over HTTPS with a self-signed
certificate (the ``DefaultAzureCredential`` path; azure-core refuses bearer tokens
over plain HTTP). Every request is recorded (method, path, JSON body) so tests can
assert what would reach a real account. Optionally a :class:`NodeSimulator`
"runs" the pool: it downloads resource files through their SAS URLs and starts the
engine tasks' command lines as local processes (see ``tests/azure/node_sim.py``).

Run alone::

    python tests/batch_fake.py --port 8090 [--account NAME --key BASE64]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

__all__ = ["BatchFake", "Recorded", "sign_shared_key"]

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


class BatchFake:
    """In-memory Batch account state behind an HTTP(S) server.

    Args:
        account: account name for shared-key auth.
        key: base64 account key.
        token: expected bearer token (HTTPS mode); None = shared key only.
        on_task: called ``on_task(fake, pool_id, job_id, task)`` after a task is added.
    """

    def __init__(
        self,
        account: str = DEFAULT_ACCOUNT,
        key: str = DEFAULT_KEY,
        *,
        token: str | None = None,
        on_task: Callable[[BatchFake, str, str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.account, self.key, self.token = account, key, token
        self.on_task = on_task
        self.pools: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, list[dict[str, Any]]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, dict[str, Any]]] = {}
        self.requests: list[Recorded] = []
        self.lock = threading.RLock()
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

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
            task = self.tasks[job_id][task_id]
            task["state"] = state
            info = task.setdefault("executionInfo", {"retryCount": 0, "requeueCount": 0})
            if state == "running":
                info["startTime"] = _now()
            if state == "completed":
                info["endTime"] = _now()
                info["exitCode"] = exit_code
                info["result"] = "success" if exit_code == 0 else "failure"

    def _make_nodes(self, pool: dict[str, Any]) -> None:
        nodes = self.nodes.setdefault(pool["id"], [])
        want = [(True, pool.get("targetDedicatedNodes") or 0)]
        want.append((False, pool.get("targetLowPriorityNodes") or 0))
        kept = []
        for dedicated, count in want:
            same = [n for n in nodes if n["isDedicated"] is dedicated][:count]
            while len(same) < count:
                idx = len(kept) + len(same)
                same.append(
                    {"id": f"tvmps_{pool['id']}_{'d' if dedicated else 'p'}{idx}_{len(nodes)}",
                     "state": "idle", "schedulingState": "enabled", "isDedicated": dedicated,
                     "vmSize": pool.get("vmSize"), "ipAddress": "10.0.0.4",
                     "startTaskInfo": {"state": "completed", "exitCode": 0, "retryCount": 0,
                                       "startTime": _now()}}
                )  # fmt: skip
            kept.extend(same)
        self.nodes[pool["id"]] = kept
        pool["currentDedicatedNodes"] = sum(n["isDedicated"] for n in kept)
        pool["currentLowPriorityNodes"] = sum(not n["isDedicated"] for n in kept)

    # ------------------------------------------------------------- dispatch
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any):
        """Route one request; return (status, json body or None)."""
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        with self.lock:
            route = _ROUTES.get((method, _shape(parts)))
            if route is None:
                return 404, _error("NotFound", f"no fake route for {method} {path}")
            return route(self, parts, body)


def _shape(parts: list[str]) -> str:
    names = {"pools", "jobs", "tasks", "nodes", "resize", "enableautoscale", "disableautoscale"}
    names |= {"updateproperties", "addtaskcollection", "terminate", "stopresize", "files"}
    return "/".join(p if p in names else "*" for p in parts)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": {"lang": "en-US", "value": message}}


def _listing(items: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    return 200, {"value": items}


def _pool_or_404(fake: BatchFake, pool_id: str):
    pool = fake.pools.get(pool_id)
    return pool, (404, _error("PoolNotFound", f"pool {pool_id} does not exist"))


def _create_pool(fake: BatchFake, parts, body):
    if body["id"] in fake.pools:
        return 409, _error("PoolExists", "The specified pool already exists.")
    pool = dict(body, state="active", allocationState="steady", creationTime=_now())
    pool.setdefault("taskSlotsPerNode", 1)
    pool["url"] = f"/pools/{body['id']}"
    fake.pools[body["id"]] = pool
    fake._make_nodes(pool)
    return 201, None


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


def _resize_pool(fake: BatchFake, parts, body):
    pool, missing = _pool_or_404(fake, parts[1])
    if not pool:
        return missing
    if pool.get("enableAutoScale"):
        return 409, _error("AutoScalingEnabled", "cannot resize an autoscale pool")
    for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        if key in body:
            pool[key] = body[key]
    fake._make_nodes(pool)
    return 202, None


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
    if body["id"] in fake.jobs:
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
    if fake.jobs.pop(parts[1], None) is None:
        return 404, _error("JobNotFound", f"job {parts[1]} does not exist")
    fake.tasks.pop(parts[1], None)
    return 202, None


def _add_task(fake: BatchFake, job_id: str, body: dict[str, Any]) -> tuple[int, Any]:
    job = fake.jobs.get(job_id)
    if job is None:
        return 404, _error("JobNotFound", f"job {job_id} does not exist")
    if body["id"] in fake.tasks[job_id]:
        return 409, _error("TaskExists", "The specified task already exists.")
    task = dict(body, state="active", creationTime=_now())
    task["executionInfo"] = {"retryCount": 0, "requeueCount": 0}
    fake.tasks[job_id][body["id"]] = task
    if fake.on_task is not None:
        fake.on_task(fake, job["poolInfo"]["poolId"], job_id, task)
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
    ("POST", "pools/*/enableautoscale"): _autoscale,
    ("POST", "pools/*/updateproperties"): _update_properties,
    ("GET", "pools/*/nodes"): _list_nodes,
    ("POST", "jobs"): _create_job,
    ("GET", "jobs"): lambda fake, parts, body: _listing(list(fake.jobs.values())),
    ("GET", "jobs/*"): _get_job,
    ("DELETE", "jobs/*"): _delete_job,
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
            fake.requests.append(
                Recorded(method=self.command, path=url.path, query=parse_qs(url.query), body=body,
                         headers=dict(self.headers.items()))
            )  # fmt: skip
            problem = self._auth_error()
            if problem:
                status, payload = 401, _error("AuthenticationFailed", problem)
            else:
                status, payload = fake.handle(self.command, url.path, parse_qs(url.query), body)
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    fake = BatchFake(args.account, args.key)
    url = fake.start(args.port)
    print(f"Batch fake on {url} (account {args.account}, key {args.key}); Ctrl-C stops", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
