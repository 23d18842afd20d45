"""A warm JVM beside the task worker: staged jars run in it without a JVM start per task.

``JvmHost`` owns one ``java -cp jvmhost.jar JvmHost`` process (``JvmHost.java`` in
this package, built with the JDK into a per-user cache at first use) and runs one
jar ``main(String[])`` call at a time in it. Each jar gets its own class loader,
cached until the staged jar changes (path, mtime, size, inode), so static state
survives between calls on one host; ``isolate=True`` (or ``Rtbatch-Isolate: true``
in the jar's manifest) gives a call a fresh class loader.

A call's ``System.out``/``System.err`` are captured (each bounded by
``JVM_HOST_OUTPUT_LIMIT`` bytes; beyond, the text ends with ``[... N bytes dropped]``)
and the call answers like the process-per-call path (``run_jar``): stdout on success,
``JavaTaskError`` otherwise:

* an exception thrown by ``main``: the message carries the Java stack trace; the host stays;
* ``System.exit(n)``: status ``n`` as from a cold JVM (0 is a success), and a fresh
  host for the next call; a JVM that dies (``-XX:+ExitOnOutOfMemoryError``, a native
  crash, a kill) is ``JvmHostDiedError`` naming its exit status (a task worker turns it
  into its own crash, retried like one), and a fresh host next time;
* ``timeout`` seconds elapsed: the host is killed (``JavaTimeoutError``).

Requests and replies travel on two dedicated pipes (not the JVM's stdout), framed
as ``MAGIC, count, (length, UTF-8 bytes) * count`` with big-endian 32-bit ints.
The JVM's own stdout/stderr (VM messages, native code) go to a small log file
whose tail is quoted when the host dies.

``run_jar_warm`` is the one routing rule used by ``java_runner`` and by jar
commands: the worker's shared host unless the call asks for ``cold`` or carries
``jvm_args`` other than the host's (those run in a JVM of their own, ``run_jar``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import logging
import os
import select
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from ._children import die_with_parent_preexec, end_child
from ._supervise import describe_exit
from .java import (
    JavaNotFoundError,
    JavaTaskError,
    JavaTimeoutError,
    build_jar,
    current_dirs,
    find_java_tool,
    jvm_policy,
    run_jar,
    split_java_command,
)
from .tasks import check_host_options, resolve_in_dir

__all__ = [
    "JVM_HOST_OUTPUT_LIMIT",
    "JvmHost",
    "JvmHostDiedError",
    "check_host_options",
    "close_shared_host",
    "configure_shared_host",
    "host_jar",
    "java_runner",
    "run_jar_warm",
    "shared_host",
]

logger = logging.getLogger(__name__)

#: Bytes of ``System.out`` and of ``System.err`` kept per call (the same bound as Python output).
JVM_HOST_OUTPUT_LIMIT = 16 * 1024 * 1024

SOURCE = Path(__file__).with_name("JvmHost.java")
_MAGIC = 0x52544A48  # "RTJH"
_HEADER = struct.Struct(">II")
_LENGTH = struct.Struct(">I")
_REPLY_SLACK = 1 << 20  # a reply may exceed two captures by its marker and stack trace
_LOG_TAIL = 4000
_LOG_MAX = 1 << 20
_EXIT_WAIT = 10.0
_START_TIMEOUT = 60.0
_CLOSE_WAIT = 2.0
#: Options the host always runs with: an OutOfMemoryError ends the JVM (a fresh host
#: next call, rather than a heap left in an unknown state), VM messages go to stderr.
_HOST_FLAGS = ("-XX:+ExitOnOutOfMemoryError", "-XX:+DisplayVMOutputToStderr")


class JvmHostDiedError(JavaTaskError):
    """The host JVM ended during a call without ``System.exit`` (an ``OutOfMemoryError``,
    a native crash, a kill, ``Runtime.halt``).

    In a shared JVM that is not necessarily the running jar's fault (another jar's
    static state may have filled the heap), so a task worker treats it as its own
    crash: it ends with the JVM's status and the engine retries the task like after
    any worker crash. ``returncode`` is the JVM's exit status (negative: a signal).
    """


class _HostGone(Exception):
    """The host process ended or broke the protocol during a call."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "realtime-batch")


@functools.lru_cache(maxsize=1)
def host_jar() -> Path:
    """The host's jar, built from ``JvmHost.java`` with the JDK at first use.

    Kept in ``$XDG_CACHE_HOME/realtime-batch`` (default ``~/.cache``) under a name
    derived from the source and the ``javac`` used, so a changed source or JDK gets
    its own build; when that directory cannot be written, in a private temporary one.
    Found once per process (a failure is retried at the next call).

    Raises:
        JavaNotFoundError: no ``javac``/``jar`` to build it with.
        JavaTaskError: the build failed.
    """
    javac = find_java_tool("javac")
    digest = hashlib.sha256(SOURCE.read_bytes() + javac.encode()).hexdigest()[:16]
    name = f"jvmhost-{digest}.jar"
    try:
        return build_jar(SOURCE, _cache_dir() / name)
    except OSError as exc:
        private = Path(tempfile.mkdtemp(prefix="rtbatch-jvmhost-"))
        logger.warning("cannot write the JVM host cache (%s); building in %s", exc, private)
        return build_jar(SOURCE, private / name)


def _frame(strings: Iterable[str]) -> bytes:
    encoded = [s.encode("utf-8", errors="surrogateescape") for s in strings]
    parts = [_HEADER.pack(_MAGIC, len(encoded))]
    for data in encoded:
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def _describe_status(code: int | None) -> str:
    if code is None:
        return "ended"
    return f"was killed by {describe_exit(code)}" if code < 0 else f"exited with status {code}"


class JvmHost:
    """One warm JVM that runs staged jars' ``main`` methods, one call at a time.

    The process starts at the first call and again after any call that ended it
    (``System.exit``, a crash, a timeout). Thread-safe: calls are serialised.

    Args:
        cwd: working directory of the JVM (relative paths in jars resolve against it).
        jvm_options: options for the host JVM (from engine configuration, never a message).
        output_limit: bytes kept of each of a call's stdout and stderr.
    """

    def __init__(
        self,
        cwd: str | os.PathLike[str] | None = None,
        *,
        jvm_options: Sequence[str] = (),
        output_limit: int = JVM_HOST_OUTPUT_LIMIT,
    ) -> None:
        self.cwd = os.path.realpath(cwd or os.getcwd())
        self.jvm_options = tuple(map(str, jvm_options))
        self.output_limit = int(output_limit)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._requests: int | None = None
        self._replies: int | None = None
        self._buffer = bytearray()
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the running host JVM, or ``None`` before the first call."""
        proc = self._proc
        return None if proc is None or proc.poll() is not None else proc.pid

    def call(
        self,
        jar_path: str | os.PathLike[str],
        args: Iterable[Any] = (),
        *,
        isolate: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Run ``main(args)`` of the jar at ``jar_path`` and return what it printed on stdout.

        Args:
            jar_path: the jar (already resolved inside the tasks directory).
            args: arguments for ``main`` (converted with ``str``).
            isolate: run in a fresh class loader (no static state from earlier calls).
            timeout: seconds before the host is killed (``JavaTimeoutError``).

        Raises:
            JavaTaskError: ``main`` threw (stack trace in the message) or called
                ``System.exit`` with a non-zero status.
            JvmHostDiedError: the JVM ended otherwise during the call.
            JavaTimeoutError: ``timeout`` elapsed.
            JavaNotFoundError: no JDK to build or run the host.
        """
        path = os.path.realpath(jar_path)
        info = os.stat(path)
        key = f"{info.st_mtime_ns}:{info.st_size}:{info.st_ino}"
        request = _frame(["call", path, key, "1" if isolate else "0", *map(str, args)])
        name = Path(path).name
        with self._lock:
            self._send(request)
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                status, stdout, stderr, detail = self._read_reply(deadline)
            except TimeoutError:
                self._stop(kill=True)
                raise JavaTimeoutError(f"{name} timed out after {timeout} s", None) from None
            except _HostGone as exc:
                code = self._stop(kill=True)
                tail = self._log_tail()
                if tail:
                    logger.warning("JVM host output before it ended:\n%s", tail)
                raise JvmHostDiedError(
                    f"{name}: the JVM host {_describe_status(code)} during the call"
                    + (f" ({exc})" if str(exc) else "")
                    + (f": {tail}" if tail else ""),
                    code,
                    "",
                    tail,
                ) from None
            return self._answer(name, status, stdout, stderr, detail)

    def _answer(self, name: str, status: str, stdout: str, stderr: str, detail: str) -> str:
        if status == "ok":
            return stdout
        if status == "exit":
            code = self._stop(kill=False)
            if code == 0:
                return stdout
            tail = stderr.strip()[-_LOG_TAIL:]
            raise JavaTaskError(
                f"{name} {_describe_status(code)}" + (f": {tail}" if tail else ""),
                code,
                stdout,
                stderr,
            )
        if status == "bad-jar":
            raise JavaTaskError(f"{name} cannot be run: {detail}", None, stdout, stderr)
        raise JavaTaskError(f"{name} threw {detail.rstrip()}", 1, stdout, stderr)

    # -- process ----------------------------------------------------------------------

    def _send(self, request: bytes) -> None:
        """Write a request, starting the host first; a host that died between calls is replaced.

        Raises:
            JavaTaskError: a fresh host did not start (e.g. a JVM option it refuses).
        """
        for attempt in (1, 2):
            if self._proc is None or self._proc.poll() is not None:
                self._stop(kill=True)
                self._start()
            try:
                assert self._requests is not None
                view = memoryview(request)
                while view:
                    view = view[os.write(self._requests, view) :]
                return
            except BrokenPipeError:
                if attempt == 2:
                    self._failed_start()
                logger.info("JVM host %s had ended before the call; starting a fresh one", self.pid)

    def _await_ready(self) -> None:
        """Wait for the new host's ``ready`` frame (it has set up its streams)."""
        try:
            ready = self._read_frame(1, time.monotonic() + _START_TIMEOUT)
        except (TimeoutError, _HostGone):
            self._failed_start()
        if ready != ["ready"]:
            self._failed_start()

    def _failed_start(self) -> NoReturn:
        code = self._stop(kill=True)
        tail = self._log_tail()
        how = _describe_status(code)
        raise JavaTaskError(
            f"the JVM host did not start ({how})" + (f": {tail}" if tail else ""),
            code,
            "",
            tail,
        )

    def _start(self) -> None:
        java = find_java_tool("java")
        jar = host_jar()
        if self._log is None:
            fd, log_path = tempfile.mkstemp(prefix="rtbatch-jvmhost-", suffix=".log")
            os.close(fd)
            self._log = open(log_path, "a+b")  # noqa: SIM115 - kept for the host's lifetime
            os.unlink(log_path)
        self._log.truncate(0)
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        argv = [
            java,
            *_HOST_FLAGS,
            *self.jvm_options,
            *("-cp", str(jar), "JvmHost"),
            *(str(request_r), str(reply_w), str(self.output_limit), str(os.getpid())),
        ]
        logger.debug("starting the JVM host: %s", argv)
        try:
            self._proc = subprocess.Popen(
                argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                pass_fds=(request_r, reply_w),
                preexec_fn=die_with_parent_preexec(),
            )
        except BaseException:
            for fd in (request_w, reply_r):
                os.close(fd)
            raise
        finally:
            os.close(request_r)
            os.close(reply_w)
        self._requests, self._replies = request_w, reply_r
        self._buffer.clear()
        self._await_ready()
        logger.info("JVM host %s started (cwd %s)", self._proc.pid, self.cwd)

    def _stop(self, *, kill: bool) -> int | None:
        """End the host (closing its request pipe; ``kill``: at once) and return its status."""
        proc, self._proc = self._proc, None
        for fd in (self._requests, self._replies):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._requests = self._replies = None
        if proc is None:
            return None
        # closing its request pipe asked it to end
        return end_child(proc, grace=0.0 if kill else _CLOSE_WAIT + _EXIT_WAIT, reap=_EXIT_WAIT)

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - _LOG_TAIL))
        return self._log.read().decode("utf-8", errors="replace").strip()

    # -- replies ----------------------------------------------------------------------

    def _read_reply(self, deadline: float | None) -> tuple[str, str, str, str]:
        status, stdout, stderr, detail = self._read_frame(4, deadline)
        return status, stdout, stderr, detail

    def _read_frame(self, expected: int, deadline: float | None) -> list[str]:
        """One frame of ``expected`` strings; ``_HostGone`` on EOF or anything else."""
        magic, count = _HEADER.unpack(self._read_exact(_HEADER.size, deadline))
        if magic != _MAGIC or count != expected:
            raise _HostGone("malformed reply")
        strings = []
        for _ in range(count):
            (length,) = _LENGTH.unpack(self._read_exact(_LENGTH.size, deadline))
            if length > 2 * self.output_limit + _REPLY_SLACK:
                raise _HostGone("malformed reply")
            strings.append(self._read_exact(length, deadline).decode("utf-8", errors="replace"))
        return strings

    def _read_exact(self, size: int, deadline: float | None) -> bytes:
        assert self._replies is not None
        poller = select.poll()
        poller.register(self._replies, select.POLLIN)
        while len(self._buffer) < size:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and (wait <= 0 or not poller.poll(wait * 1000.0)):
                raise TimeoutError
            data = os.read(self._replies, max(65536, size - len(self._buffer)))
            if not data:
                raise _HostGone("")
            self._buffer += data
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        return chunk

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop the host JVM (it exits when its request pipe closes; killed if it lingers)."""
        with self._lock:
            self._stop(kill=False)
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> JvmHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JvmHost(pid={self.pid}, cwd={self.cwd!r})"


# -- the process's shared host ---------------------------------------------------------

_shared: dict[str, Any] = {
    "host": None,
    "options": (),
    "output_limit": JVM_HOST_OUTPUT_LIMIT,
    "warned": False,
}
_shared_lock = threading.Lock()


def configure_shared_host(
    jvm_options: Sequence[str] = (), *, output_limit: int = JVM_HOST_OUTPUT_LIMIT
) -> None:
    """Set the JVM options and output bound of this process's shared host (engine configuration).

    A running host with other settings is stopped; the next call starts one with these.

    Raises:
        ValueError: see ``check_host_options``; ``output_limit`` below 1.
    """
    options = check_host_options(jvm_options)
    if output_limit < 1:
        raise ValueError(f"output_limit must be at least 1 byte, got {output_limit}")
    with _shared_lock:
        if (options, output_limit) != (_shared["options"], _shared["output_limit"]):
            _shared.update(options=options, output_limit=int(output_limit))
            _close_locked()


def shared_host(cwd: str | os.PathLike[str] | None = None) -> JvmHost:
    """This process's host for ``cwd`` (a host for another directory is replaced)."""
    directory = os.path.realpath(cwd or os.getcwd())
    with _shared_lock:
        host = _shared["host"]
        if host is None or host.cwd != directory:
            _close_locked()
            host = _shared["host"] = JvmHost(
                directory, jvm_options=_shared["options"], output_limit=_shared["output_limit"]
            )
        return host


def _close_locked() -> None:
    host, _shared["host"] = _shared["host"], None
    if host is not None:
        host.close()


def close_shared_host() -> None:
    """Stop this process's shared host, if any (also run at interpreter exit)."""
    with _shared_lock:
        _close_locked()


atexit.register(close_shared_host)


def run_jar_warm(
    jar_path: str | os.PathLike[str],
    args: Iterable[Any] = (),
    *,
    jvm_args: Sequence[str] = (),
    timeout: float | None = None,
    cwd: str | os.PathLike[str] | None = None,
    isolate: bool = False,
    cold: bool = False,
) -> str:
    """Run a resolved jar in the shared host; ``cold``, or with ``jvm_args`` other than
    the host's, in a JVM of its own (``run_jar``).

    Without a JDK to build the host (only a JRE), every call runs cold.

    Raises:
        JavaTaskError, JavaTimeoutError, JavaNotFoundError: as ``JvmHost.call`` and ``run_jar``.
    """
    options = tuple(map(str, jvm_args))
    if cold or (options and options != _shared["options"]):
        return run_jar(jar_path, args, jvm_args=jvm_args, timeout=timeout, cwd=cwd)
    try:
        host_jar()
    except JavaNotFoundError as exc:
        if not _shared["warned"]:
            _shared["warned"] = True
            logger.warning("no JVM host (%s): every jar call starts its own JVM", exc)
        return run_jar(jar_path, args, timeout=timeout, cwd=cwd)
    return shared_host(cwd).call(jar_path, args, isolate=isolate, timeout=timeout)


def java_runner(
    jar: str | list[Any] | tuple[Any, ...],
    *args: Any,
    jvm_args: Sequence[str] = (),
    timeout: float | None = None,
    tasks_dir: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    cold: bool = False,
    isolate: bool = False,
) -> str | list[str]:
    """Run a staged jar with an argument list and return its stdout text.

    The prototype's form, a command list ``["java", OPTIONS..., "-jar", JAR, ARGS...]``
    (``split_java_command``: only ``java``, only the engine's allowed sizing options),
    returns the output as a list of lines instead.

    By default the jar runs in this process's warm JVM host (``jvm_host``): no JVM
    start per call, and the jar's static state survives between calls unless
    ``isolate``. ``cold=True``, or ``jvm_args`` other than the host's, starts a JVM
    for this call alone.

    Args:
        jar: file name of the jar inside the tasks directory (same rules as commands),
            or the prototype's command list (then no ``args`` or ``jvm_args``).
        *args: arguments for the jar's ``main`` (converted with ``str``).
        jvm_args: options for the JVM itself, e.g. ``["-Xmx256m"]``.
        timeout: seconds before the JVM is killed (``JavaTimeoutError``).
        tasks_dir: where to look for ``jar``; defaults to the running worker's tasks
            directory, else the current directory.
        cwd: working directory of the JVM; defaults to the worker's work directory.
        cold: start a JVM for this call (``java -jar``) instead of using the warm host.
        isolate: in the warm host, load the jar in a fresh class loader for this call.

    Raises:
        InvalidCommandError, CommandNotFoundError: the jar name is unsafe or missing, or
            a command list runs another program or holds a refused option.
        TypeError: a command list with further ``args`` or ``jvm_args``.
        JavaTaskError: non-zero exit or ``System.exit(n)`` with n != 0 (with stderr), or
            an exception thrown by ``main`` in the warm host (with its stack trace).
        JvmHostDiedError: the warm host's JVM died during the call (``jvm_host``).
    """
    if isinstance(jar, (list, tuple)):
        if args or jvm_args:
            raise TypeError(
                "java_runner takes a command list alone, or a jar name with arguments and "
                "jvm_args, not both"
            )
        name, options, jar_args = split_java_command(jar, jvm_policy())
        output = java_runner(
            name, *jar_args, jvm_args=options, timeout=timeout, tasks_dir=tasks_dir, cwd=cwd,
            cold=cold, isolate=isolate,
        )  # fmt: skip
        return output.splitlines()
    directory = tasks_dir or current_dirs["tasks_dir"] or os.getcwd()
    path = resolve_in_dir(jar, directory, what="jar")
    workdir = cwd or current_dirs["work_dir"]
    return run_jar_warm(
        path, args, jvm_args=jvm_args, timeout=timeout, cwd=workdir, isolate=isolate, cold=cold
    )
