"""Running staged jars (``java_runner``) and building them from source (``build_jar``).

``java_runner`` never uses a shell: the jar is resolved inside the tasks
directory with the same rules as task commands, the arguments are passed as an
argument list, and stdout/stderr are captured as text, each bounded while it
streams (``max_output`` bytes, default the engine's ``--max-output``, 16 MiB:
the rest is read and dropped, and the text ends with ``[... N bytes dropped]``).
A non-zero exit raises ``JavaTaskError`` carrying stderr, which the engine turns
into an error result.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._children import die_with_parent_preexec, end_child
from ._output import DEFAULT_MAX_OUTPUT, dropped_marker
from .credentials import task_environment
from .tasks import InvalidCommandError, JvmOptionPolicy

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "JavaNotFoundError",
    "JavaTaskError",
    "JavaTimeoutError",
    "build_jar",
    "dropped_marker",
    "find_java_tool",
    "run_jar",
    "set_jvm_policy",
    "split_java_command",
]

logger = logging.getLogger(__name__)

#: Directories of the task being run in this process (set by the engine's worker).
current_dirs: dict[str, str | None] = {"tasks_dir": None, "work_dir": None}

_STDERR_TAIL = 4000
_CHUNK = 1 << 16

#: Output bound of this process (the engine's worker sets it from ``--max-output``).
_limits: dict[str, int] = {"max_output": DEFAULT_MAX_OUTPUT}

#: The JVM options a command list may hold in this process (the worker sets the
#: engine's policy; None: ``JvmOptionPolicy()``, made at first use).
_policy: dict[str, JvmOptionPolicy | None] = {"jvm": None}


class JavaTaskError(RuntimeError):
    """A jar exited with a non-zero status.

    Attributes:
        returncode: the exit status (negative: killed by that signal).
        stdout: captured standard output.
        stderr: captured standard error.
    """

    def __init__(
        self, message: str, returncode: int | None = None, stdout: str = "", stderr: str = ""
    ):
        super().__init__(message)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class JavaNotFoundError(JavaTaskError):
    """No ``java``/``javac``/``jar`` executable was found (set ``JAVA_HOME`` or ``PATH``)."""


class JavaTimeoutError(JavaTaskError):
    """A jar ran longer than its timeout and was killed."""


def set_current_dirs(tasks_dir: str | None, work_dir: str | None) -> None:
    """Record the worker's tasks and work directories for module-level ``java_runner`` calls."""
    current_dirs["tasks_dir"] = tasks_dir
    current_dirs["work_dir"] = work_dir


def set_max_output(max_output: int) -> None:
    """Bytes of a jar's stdout/stderr this process keeps (the worker's ``--max-output``)."""
    _limits["max_output"] = max_output


def set_jvm_policy(policy: JvmOptionPolicy) -> None:
    """The JVM options a command list may hold here (the worker's engine's policy)."""
    _policy["jvm"] = policy


def jvm_policy() -> JvmOptionPolicy:
    policy = _policy["jvm"]
    if policy is None:
        policy = _policy["jvm"] = JvmOptionPolicy()
    return policy


def split_java_command(
    argv: Sequence[Any], policy: JvmOptionPolicy
) -> tuple[str, list[str], list[Any]]:
    """Read the prototype's ``["java", OPTIONS..., "-jar", JAR, ARGS...]``.

    Returns ``(jar, options, args)``.

    The list often comes from a task message (the prototype's ``params``), so it
    chooses nothing but the jar's arguments: the program must be ``java``, each
    option must pass ``policy`` (the engine's sizing options) and ``-jar`` must name
    the jar, which ``java_runner`` then resolves inside the tasks directory.

    Raises:
        InvalidCommandError: another program, a refused option, or no ``-jar JAR``.
    """
    if not argv:
        raise InvalidCommandError(
            "the java command list is empty: expected ['java', '-jar', JAR, ...]"
        )
    program, *rest = argv
    if program != "java":
        raise InvalidCommandError(
            f"java command list starts with {program!r}: only 'java' is run (as "
            "['java', OPTIONS..., '-jar', JAR, ARGS...])"
        )
    if "-jar" not in rest:
        raise InvalidCommandError(
            "the java command list has no '-jar JAR': only a staged jar is run "
            "(['java', OPTIONS..., '-jar', JAR, ARGS...])"
        )
    at = rest.index("-jar")
    options = policy.check(rest[:at])
    if at + 1 >= len(rest):
        raise InvalidCommandError("the java command list's '-jar' names no jar")
    jar = rest[at + 1]
    if not isinstance(jar, str):
        raise InvalidCommandError(f"jar {jar!r} is not a string")
    return jar, options, list(rest[at + 2 :])


class _Capture:
    """Up to ``limit`` bytes of one stream; counts the rest, which it does not keep."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        text = self.data.decode(errors="replace")
        return text + dropped_marker(self.dropped) if self.dropped else text


def _collect(
    proc: subprocess.Popen[bytes], limit: int, deadline: float | None
) -> tuple[_Capture, _Capture, bool]:
    """Read the JVM's stdout and stderr as they stream; True if ``deadline`` passed."""
    out, err = _Capture(limit), _Capture(limit)
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)  # type: ignore[arg-type]
        selector.register(proc.stderr, selectors.EVENT_READ, err)  # type: ignore[arg-type]
        while selector.get_map():
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return out, err, True
            for key, _ in selector.select(wait):
                chunk = os.read(key.fd, _CHUNK)
                if chunk:
                    key.data.add(chunk)
                else:
                    selector.unregister(key.fileobj)
    return out, err, False


def find_java_tool(name: str = "java") -> str:
    """Path of a JDK tool (``java``, ``javac``, ``jar``): ``$JAVA_HOME/bin`` first, then ``PATH``.

    Raises:
        JavaNotFoundError: the tool is not installed.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home, "bin", name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise JavaNotFoundError(f"{name!r} not found: install a JDK or set JAVA_HOME")
    return found


def run_jar(
    jar_path: str | os.PathLike[str],
    args: Iterable[Any] = (),
    *,
    jvm_args: Sequence[str] = (),
    timeout: float | None = None,
    cwd: str | os.PathLike[str] | None = None,
    max_output: int | None = None,
) -> str:
    """Run ``java [jvm_args] -jar jar_path args...`` and return its stdout text.

    ``jvm_args`` are passed as given: the engine checks a message's ``jvm_args``
    (``JvmOptionPolicy``) before it calls this. Stdout and stderr are each kept up
    to ``max_output`` bytes (default: this process's bound, 16 MiB unless the
    engine sets another); the rest is read, dropped and counted in a final
    ``[... N bytes dropped]`` line, so a chatty jar cannot fill memory.

    Raises:
        JavaTaskError: non-zero exit (message ends with the tail of stderr).
        JavaTimeoutError: ``timeout`` seconds elapsed (the JVM is killed).
        JavaNotFoundError: no ``java`` executable.
    """
    argv = [find_java_tool("java"), *map(str, jvm_args), "-jar", str(jar_path), *map(str, args)]
    logger.debug("running %s", argv)
    limit = _limits["max_output"] if max_output is None else max_output
    deadline = None if timeout is None else time.monotonic() + timeout
    with subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent_preexec(),
        env=task_environment(),  # never the worker's credentials (there are none left)
    ) as proc:
        try:
            out, err, timed_out = _collect(proc, limit, deadline)
            if not timed_out:  # both pipes closed: the JVM is ending
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                proc.wait(left)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # on a timeout, or anything else that stops the reading: no JVM left
            returncode = end_child(proc, reap=None)
    if timed_out:
        raise JavaTimeoutError(
            f"{Path(jar_path).name} timed out after {timeout} s", None, "", err.text()
        )
    stdout, stderr = out.text(), err.text()
    if returncode != 0:
        tail = stderr.strip()[-_STDERR_TAIL:]
        how = (
            f"was killed by signal {-returncode}"
            if returncode < 0
            else f"exited with status {returncode}"
        )
        raise JavaTaskError(
            f"{Path(jar_path).name} {how}" + (f": {tail}" if tail else ""),
            returncode,
            stdout,
            stderr,
        )
    return stdout


def build_jar(
    java_file: str | os.PathLike[str],
    out_jar: str | os.PathLike[str],
    *,
    main_class: str | None = None,
    force: bool = False,
    timeout: float = 120.0,
) -> Path:
    """Compile one ``.java`` file (default package) into an executable jar.

    The jar is rebuilt only when missing or older than the source (or ``force``), and
    is replaced atomically, so concurrent callers never see a half-written jar.

    Args:
        java_file: the source file; its stem is the main class unless ``main_class``.
        out_jar: where to write the jar.

    Returns:
        The jar's path.

    Raises:
        JavaNotFoundError: no JDK (``javac``/``jar``).
        JavaTaskError: compilation failed (message holds the compiler's output).
    """
    source, target = Path(java_file), Path(out_jar)
    if not force and target.is_file() and target.stat().st_mtime_ns >= source.stat().st_mtime_ns:
        return target
    javac, jar_tool = find_java_tool("javac"), find_java_tool("jar")
    main = main_class or source.stem
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rtbatch-javac-") as tmp:
        classes = Path(tmp, "classes")
        classes.mkdir()
        steps = [
            [javac, "-d", str(classes), str(source)],
            [jar_tool, "cfe", str(Path(tmp, "out.jar")), main, "-C", str(classes), "."],
        ]
        for argv in steps:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0:
                raise JavaTaskError(
                    f"{Path(argv[0]).name} failed ({proc.returncode}): "
                    f"{(proc.stderr or proc.stdout).strip()[-_STDERR_TAIL:]}",
                    proc.returncode,
                    proc.stdout,
                    proc.stderr,
                )
        staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(Path(tmp, "out.jar"), staged)
        os.replace(staged, target)
    logger.info("built %s from %s", target, source)
    return target
