"""``LocalPool``: an emulated Batch pool whose engines are local processes.

Each engine is started with the same command line a Batch node runs
(``python -m realtime_batch.engine ...``) in a per-node directory staged the way
Batch stages resource files: task files under ``tasks/``, input files in the
working directory ``wd/``. With a ``zmq://`` URL the pool starts the broker too;
with ``memory://`` the engines run as threads in this process (the fast unit-test
mode); with a Service Bus URL the engines connect to it directly.

Every process the pool starts is in its own process group, is told to die with
the pool's process (``PR_SET_PDEATHSIG`` on Linux) and is stopped by ``close()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from realtime_batch.engine import JvmOptionPolicy
from realtime_batch.engine._children import die_with_parent, end_child
from realtime_batch.engine.errors import WORKER_MODE_REMOVED
from realtime_batch.orchestrator.pool import OrchestratorError, Pool, PoolStateError, StrPath
from realtime_batch.payloads import payload_store_for
from realtime_batch.transport import registered_scheme

__all__ = ["LocalPool"]

log = logging.getLogger(__name__)

_READY_TIMEOUT = 60.0
_STOP_GRACE = 5.0


class _Proc:
    """A child process whose stdout is scanned for a readiness line.

    ``stdin_text`` is written to its standard input, which is then closed (how an
    engine gets its transport URL: never on its command line, see ``--transport-file``).
    """

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path,
        log_path: Path,
        ready_prefix: str,
        env: dict[str, str],
        stdin_text: str | None = None,
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        self.ready = threading.Event()
        self.ready_line = ""
        self._terminated = False
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            stdin=subprocess.DEVNULL if stdin_text is None else subprocess.PIPE,
            process_group=0,
            preexec_fn=die_with_parent,
        )
        if stdin_text is not None and self.popen.stdin is not None:
            with contextlib.suppress(BrokenPipeError):  # it died at once: wait_ready says so
                self.popen.stdin.write(stdin_text.encode())
            with contextlib.suppress(BrokenPipeError):
                self.popen.stdin.close()
        self._reader = threading.Thread(target=self._read, args=(ready_prefix,), daemon=True)
        self._reader.start()

    def _read(self, prefix: str) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode(errors="replace").strip()
            if not self.ready.is_set() and line.startswith(prefix):
                self.ready_line = line
                self.ready.set()
        self.ready.set()  # EOF: wake waiters; they check whether the process lives

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout: float, what: str) -> str:
        # no ready line: timed out, or its stdout ended (it exited, perhaps not reaped yet)
        if not self.ready.wait(timeout) or not self.ready_line:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            self.stop(0)
            raise OrchestratorError(f"{what} did not start (see {self.log_path}):\n{tail}")
        return self.ready_line

    def signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            self._terminated = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def stop(self, grace: float = _STOP_GRACE) -> None:
        # SIGTERM once only: an engine takes a second as "stop now" and gives its running
        # task back instead of letting it finish
        ask = None if self._terminated else signal.SIGTERM
        self._terminated = True
        end_child(self.popen, ask=ask, grace=grace, group=True, reap=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log_file.close()


def _refuse_removed(removed: dict[str, object]) -> None:
    """Refuse keyword arguments ``LocalPool`` no longer takes, saying why.

    Raises:
        TypeError: ``worker_mode`` (removed in #17) or an unknown keyword argument.
    """
    if "worker_mode" in removed:
        raise TypeError(f"LocalPool(worker_mode=...): {WORKER_MODE_REMOVED}")
    if removed:
        raise TypeError(f"LocalPool() got an unexpected keyword argument {next(iter(removed))!r}")


def _check_port_free(host: str, port: int) -> None:
    """Refuse to start a broker on a port something already listens on.

    Raises:
        OrchestratorError: the port is taken, with what to do instead.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OrchestratorError(
                f"cannot start a broker on {host}:{port}: the port is in use ({exc.strerror}). "
                "If a broker already runs there, use it with LocalPool(..., "
                "start_broker=False); otherwise choose another port, or port 0 for a free one"
            ) from None


class LocalPool(Pool):
    """An emulated pool of engines on this machine.

    Args:
        engines: number of engines (one per emulated node slot).
        transport: ``zmq://127.0.0.1:0`` (default: start a broker on a free port),
            ``zmq://HOST:PORT`` (start a broker there unless ``start_broker=False``),
            ``memory://NAME`` (engines as threads in this process) or a Service Bus URL.
        task_files: task modules and jars the engines may run.
        input_files: data files placed in each engine's working directory.
        job: job id (generated when omitted).
        queue: the task queue the engines pull from.
        root: where node directories are made (a temporary directory by default,
            removed on close).
        prefetch: tasks each engine holds ahead (16: enough to hide broker round trips
            for tiny tasks, small enough to keep long tasks spread over the engines).
        lock_duration / max_delivery_count / default_timeout: engine settings.
        restart_dead: restart an engine that exits unexpectedly.
        allow_jvm_options: regular expressions of further JVM options jar tasks may pass
            in ``jvm_args`` (``rtbatch engine --allow-jvm-option``); default: sizes only.
        max_jvm_heap: largest ``-Xmx``/``-Xms`` in bytes a jar task may ask for
            (default: this machine's memory).
        max_output: what one task's output may hold, in bytes (default 16 MiB).
        broker_args: extra command-line arguments for the broker (e.g. ``["--data-dir", d]``).
        start_broker: start a broker for a ``zmq://`` URL with an explicit port.
        env: environment variables of the engine processes, on top of this process's.
        pass_env: names of variables the engines' task processes get besides the
            allowlist (``rtbatch engine --pass-env``; credential-like names are refused).
        keep_logs: keep the temporary pool directory (``root``: node-*/engine.log and
            broker.log) after ``close`` so that ``rtbatch logs --local`` can read them;
            a ``root`` you give is always kept.
        metrics_port: serve Prometheus metrics: the broker on this port and engine N
            (node-N) on ``metrics_port + 1 + N`` (0: every one on a free port, logged).
        curve: run the whole pool with CURVE and roles (``zmq://`` with a broker this pool
            starts): ``True`` makes the keys in ``ROOT/keys``, a path keeps them there
            (reused when present): key pairs ``broker``, ``engine``, ``client`` and
            ``admin`` and the authorized-keys directory ``authorized/ROLE/*.key``. The
            broker enforces the roles, engines connect with the engine key, and
            sessions opened on the pool with the client key (``transport_options``).
    """

    def __init__(
        self,
        engines: int = 2,
        transport: str = "zmq://127.0.0.1:0",
        task_files: Sequence[StrPath] = (),
        input_files: Sequence[StrPath] = (),
        *,
        job: str | None = None,
        queue: str = "tasks",
        root: StrPath | None = None,
        prefetch: int = 16,
        lock_duration: float = 30.0,
        max_delivery_count: int = 10,
        default_timeout: float | None = None,
        restart_dead: bool = True,
        broker_args: Sequence[str] = (),
        start_broker: bool = True,
        env: dict[str, str] | None = None,
        pass_env: Sequence[str] = (),
        keep_logs: bool = False,
        metrics_port: int | None = None,
        allow_jvm_options: Sequence[str] = (),
        max_jvm_heap: int | None = None,
        max_output: int | None = None,
        curve: bool | StrPath = False,
        **removed: object,
    ) -> None:
        from realtime_batch.engine.credentials import check_pass_env

        if engines < 0:
            raise ValueError("engines must be >= 0")
        _refuse_removed(removed)
        self.pass_env = check_pass_env(pass_env)
        # checked here, so a bad pattern fails now rather than in every engine
        self.jvm_options = JvmOptionPolicy(max_jvm_heap, allow_jvm_options)
        self.max_output = max_output
        self._scheme = registered_scheme(transport)
        if metrics_port is not None and self._scheme == "memory":
            raise ValueError(
                "metrics_port needs engine processes (zmq:// or Service Bus); memory:// "
                "engines are threads of this process: serve one with "
                "realtime_batch.engine.metrics.serve_engine_metrics"
            )
        self._url = transport
        self._job = job or f"job-{uuid.uuid4().hex[:8]}"
        self.queue = queue
        self.prefetch = prefetch
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.default_timeout = default_timeout
        self.restart_dead = restart_dead
        self._env = {**os.environ, **(env or {})}
        self._own_root = root is None and not keep_logs
        self.metrics_port = metrics_port
        self.root = Path(tempfile.mkdtemp(prefix="rtbatch-pool-") if root is None else root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.payload_store = payload_store_for(self._scheme, self.root, self._env)  # (#20)
        self._task_files = [Path(f) for f in task_files]
        self._input_files = [Path(f) for f in input_files]
        self._lock = threading.RLock()
        self._closed = False
        self._broker: _Proc | None = None
        self._broker_args = list(broker_args)
        if metrics_port is not None:
            self._broker_args += ["--metrics-port", str(metrics_port)]
        self._engines: list[Any] = []  # _Proc, or an in-process Engine (memory://)
        self._memory_transports: list[Any] = []
        self._next_node = 0
        self.restarts = 0
        self._monitor_stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self.curve_keys: Path | None = None
        if curve is not False:
            if self._scheme != "zmq" or not start_broker:
                raise ValueError("curve needs a zmq:// transport with a broker this pool starts")
            self.curve_keys = self.root / "keys" if curve is True else Path(curve)
            self._broker_args += _make_curve_keys(self.curve_keys)
            self._env.update(
                RTBATCH_CURVE_SECRET_KEY_FILE=str(self.curve_keys / "engine.key_secret"),
                RTBATCH_CURVE_SERVER_KEY=str(self.curve_keys / "broker.key"),
            )
        try:
            if self._scheme == "zmq" and start_broker:
                self._start_broker(self._broker_args)
            self._target = engines
            self._start_engines(engines)
            if restart_dead and self._scheme != "memory":
                self._monitor = threading.Thread(
                    target=self._watch, daemon=True, name="rtb-pool-monitor"
                )
                self._monitor.start()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ properties
    @property
    def transport_url(self) -> str:
        return self._url

    @property
    def job(self) -> str:
        return self._job

    @property
    def transport_options(self) -> dict[str, Any]:
        """A session's transport options: the client key with ``curve`` (else none)."""
        return self.curve_options("client")

    def curve_options(self, role: str) -> dict[str, Any]:
        """Transport options connecting with the key of ``role`` (``client``, ``engine``,
        ``admin``) of a ``curve`` pool; empty without ``curve``."""
        if self.curve_keys is None:
            return {}
        return {
            "curve_server_key": str(self.curve_keys / "broker.key"),
            "curve_secret_key": str(self.curve_keys / f"{role}.key_secret"),
        }

    @property
    def engines(self) -> int:
        with self._lock:
            return len(self._engines)

    def engine_pids(self, *, ready: bool = False) -> list[int]:
        """PIDs of the engine processes (empty in memory:// mode).

        ``ready``: only those that said they are ready (connected, worker warm); an
        engine being started or restarted is left out.
        """
        with self._lock:
            return [
                e.pid
                for e in self._engines
                if isinstance(e, _Proc) and (not ready or (e.ready.is_set() and e.ready_line))
            ]

    @property
    def broker_pid(self) -> int | None:
        return self._broker.pid if self._broker else None

    # ------------------------------------------------------------------ broker
    def _start_broker(self, extra: list[str]) -> None:
        parts = urlsplit(self._url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 0
        if port and self._broker is None:  # a restart binds the port its own broker held
            _check_port_free(host, port)
        argv = [
            sys.executable,
            "-m",
            "realtime_batch.transport.zeromq",
            "--bind",
            f"tcp://{host}:{port}",
            *extra,
        ]
        self._broker = _Proc(
            argv,
            cwd=self.root,
            log_path=self.root / "broker.log",
            ready_prefix="READY",
            env=self._env,
        )
        line = self._broker.wait_ready(_READY_TIMEOUT, "the ZeroMQ broker")
        endpoint = line.split()[1]  # READY tcp://127.0.0.1:PORT
        self._url = "zmq://" + endpoint.removeprefix("tcp://")
        log.info("broker %d ready at %s", self._broker.pid, self._url)

    def restart_broker(self, signum: int = signal.SIGKILL) -> int:
        """Stop the broker with ``signum`` and start it again on the same port (fault tests).

        The new broker gets the same arguments (a ``--data-dir`` broker restores its
        journal); engines and sessions reconnect by themselves. Returns its pid.
        """
        with self._lock:
            self._check_open()
            old = self._broker
        if old is None:
            raise PoolStateError("this pool did not start a broker")
        old.signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            old.popen.wait(_STOP_GRACE)
        old.stop(0)
        self._start_broker(self._broker_args)
        assert self._broker is not None
        return self._broker.pid

    # ------------------------------------------------------------------ staging
    def _node_dir(self, index: int) -> Path:
        return self.root / f"node-{index}"

    def _stage_node(self, node: Path) -> None:
        for sub, files in (("tasks", self._task_files), ("wd", self._input_files)):
            target = node / sub
            target.mkdir(parents=True, exist_ok=True)
            for src in files:
                if not src.is_file():
                    raise OrchestratorError(f"cannot stage {src}: no such file")
                shutil.copy2(src, target / src.name)

    def stage(self, files: Iterable[StrPath]) -> list[str]:
        """Copy task files to every node (and to nodes started later)."""
        new = [Path(f) for f in files]
        self._task_files.extend(new)
        with self._lock:
            nodes = {self._node_dir(i) for i in range(self._next_node)}
        for node in nodes:
            self._stage_node(node)
        return [f.name for f in new]

    # ------------------------------------------------------------------ engines
    def _engine_argv(self, node: Path) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "realtime_batch.engine",
            "--transport-file",
            "-",  # the URL (a connection string holds a key) comes on stdin
            "--queue",
            self.queue,
            "--tasks-dir",
            str(node / "tasks"),
            "--work-dir",
            str(node / "wd"),
            "--prefetch",
            str(self.prefetch),
            "--lock-duration",
            str(self.lock_duration),
            "--max-delivery-count",
            str(self.max_delivery_count),
        ]
        if self.default_timeout is not None:
            argv += ["--default-timeout", str(self.default_timeout)]
        for pattern in self.jvm_options.allow:
            argv += ["--allow-jvm-option", pattern]
        argv += ["--max-jvm-heap", str(self.jvm_options.max_heap)]
        if self.max_output is not None:
            argv += ["--max-output", str(self.max_output)]
        # rotated by the engine; its worker's log and print output: engine-worker.log
        argv += ["--log-file", str(node / "engine.log")]
        for name in self.pass_env:
            argv += ["--pass-env", name]
        if self.metrics_port is not None:  # before the last option: argv[-1] names the engine
            index = int(node.name.rpartition("-")[2])
            port = self.metrics_port + 1 + index if self.metrics_port else 0
            argv[3:3] = ["--metrics-port", str(port)]
        return argv

    def _spawn(self) -> Any:
        with self._lock:
            index = self._next_node
            self._next_node += 1
        node = self._node_dir(index)
        self._stage_node(node)
        if self._scheme == "memory":  # threads share a pid: add the node index
            return self._spawn_thread(node, f"{socket.gethostname()}-{os.getpid()}-{index}")
        # A process uses the engine's own id, host name + pid, as on a Batch node.
        return _Proc(
            self._engine_argv(node),
            cwd=node / "wd",
            log_path=node / "engine.log",
            ready_prefix="ENGINE READY",
            env=self._env,
            stdin_text=self._url,
        )

    def _spawn_thread(self, node: Path, engine_id: str) -> Any:
        from realtime_batch.engine import Engine
        from realtime_batch.transport import open_transport

        transport = open_transport(self._url)
        self._memory_transports.append(transport)
        engine = Engine(
            transport,
            self.queue,
            node / "tasks",
            work_dir=node / "wd",
            prefetch=self.prefetch,
            engine_id=engine_id,
            default_timeout=self.default_timeout,
            pass_env=self.pass_env,
            jvm_options=self.jvm_options,
            **({} if self.max_output is None else {"max_output": self.max_output}),
        )
        return engine.start()

    def _start_engines(self, count: int) -> None:
        # Declare before engines race to it; with curve, only the admin may give other
        # settings than the defaults.
        if self._scheme == "memory" or self.curve_keys is not None:
            from realtime_batch.transport import open_transport

            with open_transport(self._url, **self.curve_options("admin")) as transport:
                transport.declare_queue(
                    self.queue,
                    lock_duration=self.lock_duration,
                    max_delivery_count=self.max_delivery_count,
                )
        started = [self._spawn() for _ in range(count)]
        with self._lock:
            self._engines.extend(started)
        for engine in started:
            if isinstance(engine, _Proc):
                engine.wait_ready(_READY_TIMEOUT, f"engine {engine.argv[-1]}")

    def start_engines(self, job: str | None = None) -> str:
        """Engines start with the pool; this returns the job id (the emulator runs one job)."""
        if job is not None and job != self._job:
            raise PoolStateError(
                f"LocalPool runs one job ({self._job!r}); create another pool for {job!r}"
            )
        return self._job

    def resize(self, engines: int) -> None:
        """Start or gracefully stop engines until ``engines`` run."""
        if engines < 0:
            raise ValueError("engines must be >= 0")
        with self._lock:
            self._check_open()
            self._target = engines
            extra = engines - len(self._engines)
            removed = [] if extra >= 0 else self._engines[engines:]
            if removed:
                del self._engines[engines:]
        if extra > 0:
            self._start_engines(extra)
        for engine in removed:  # SIGTERM: running tasks finish, prefetched ones go back
            self._stop_engine(engine)

    def repurpose(
        self,
        pool_id: str | None = None,
        task_files: Sequence[StrPath] = (),
        input_files: Sequence[StrPath] = (),
    ) -> LocalPool:
        """Replace the staged files and restart every engine on them."""
        with self._lock:
            self._check_open()
            count = len(self._engines)
            old = list(self._engines)
            self._engines.clear()
            self._task_files = [Path(f) for f in task_files]
            self._input_files = [Path(f) for f in input_files]
        for engine in old:
            self._stop_engine(engine)
        self._start_engines(count)
        return self

    def _stop_engine(self, engine: Any, grace: float = _STOP_GRACE) -> None:
        if isinstance(engine, _Proc):
            engine.stop(grace)
        else:
            engine.stop(timeout=grace)

    def _watch(self) -> None:
        while not self._monitor_stop.wait(0.5):
            with self._lock:
                if self._closed:
                    return
                dead = [e for e in self._engines if isinstance(e, _Proc) and not e.alive()]
                for engine in dead:
                    self._engines.remove(engine)
            for engine in dead:
                log.warning(
                    "engine pid %d exited with %s; restarting", engine.pid, engine.popen.returncode
                )
                engine.stop(0)
                self.restarts += 1
                try:
                    self._start_engines(1)
                except OrchestratorError as exc:
                    log.error("could not restart an engine: %s", exc)

    def _check_open(self) -> None:
        if self._closed:
            raise PoolStateError("the pool is closed")

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Stop every engine and the broker, and remove the temporary node directories."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            engines = list(self._engines)
            self._engines.clear()
        self._monitor_stop.set()
        if self._monitor is not None:
            self._monitor.join(5)
        procs = [e for e in engines if isinstance(e, _Proc)]
        for proc in procs:  # signal all first, then wait: stops run in parallel
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for proc in procs:
            proc.stop(max(deadline - time.monotonic(), 0.1))
        for engine in engines:
            if not isinstance(engine, _Proc):
                engine.stop(timeout=_STOP_GRACE)
        for transport in self._memory_transports:
            transport.close()
        if self._broker is not None:
            self._broker.stop()
        if self.payload_store is not None:
            self.payload_store.drop_job(self._job)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            log.info("pool directory kept: %s (rtbatch logs --local --pool-dir it)", self.root)

    def __enter__(self) -> LocalPool:
        return self

    def __repr__(self) -> str:
        from realtime_batch.config import redact

        url = redact("transport.url", self._url)  # a connection string carries its key
        return f"<LocalPool {url} job={self._job!r} engines={self.engines}>"


def _make_curve_keys(directory: Path) -> list[str]:
    """Make (or reuse) a pool's CURVE keys; return the broker's arguments for them."""
    from realtime_batch.transport.zeromq.curve import authorize_key, generate_keys

    authorized = directory / "authorized"
    for name, role in (("broker", None), ("engine", "engine"), ("client", "client"),
                       ("admin", "admin")):  # fmt: skip
        if (directory / f"{name}.key_secret").exists():
            continue
        public, _secret = generate_keys(directory, name)
        if role is not None:
            authorize_key(public, authorized, role)
    return [
        "--curve-secret-key",
        str(directory / "broker.key_secret"),
        "--authorized-keys",
        str(authorized),
    ]
