"""Credentials on a node: how an engine gets its own, and what task processes inherit.

* An engine's transport credential never travels in a command line, which any user
  of the node can read (``/proc/PID/cmdline``). ``rtbatch engine`` reads it from a
  private file (``--transport-file``, mode 0600; ``-`` reads standard input) or from
  ``RTBATCH_TRANSPORT``, which it removes from its environment, and from the copy the
  kernel shows in ``/proc/PID/environ``, before any worker starts.
* Task processes (the worker that runs task code, and any JVM it starts) get an
  environment built from an allowlist, :data:`TASK_ENV_NAMES`, plus the variables an
  operator names with ``--pass-env``; a name that looks like a credential cannot be
  passed (:func:`check_pass_env`).
* The engine process is made non-dumpable (:func:`deny_tracing`), so task code running
  as the same (non-root) user cannot read its memory or its environment via ``/proc``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import CredentialError

__all__ = [
    "CREDENTIAL_ENV",
    "TASK_ENV_NAMES",
    "TASK_ENV_PREFIXES",
    "CredentialError",
    "check_pass_env",
    "deny_tracing",
    "forget_environment_variables",
    "read_credential_file",
    "scrub_environ",
    "task_environment",
]

logger = logging.getLogger(__name__)

#: variables that may hold an engine's transport credential (``RTBATCH_ENGINE_TRANSPORT``
#: is the Azure job's setting); the engine removes them from its environment at start.
CREDENTIAL_ENV = ("RTBATCH_TRANSPORT", "RTBATCH_ENGINE_TRANSPORT")

#: variables a task process gets from the engine's environment, when set there
TASK_ENV_NAMES = frozenset(
    {
        # the system: where programs, the home and temporary files are, the locale
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM",
        "TMPDIR", "TEMP", "TMP", "LD_LIBRARY_PATH",
        # Java: which JDK (JVM options come from the engine's allowlist, not from here)
        "JAVA_HOME",
        # Python: the worker is ``python -m realtime_batch.engine.worker`` and must import
        "PYTHONPATH", "PYTHONHOME", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "VIRTUAL_ENV",
        # the worker's log level
        "RTBATCH_LOG_LEVEL",
        # the payload store's directory (a path, not a credential): a direct-mode worker
        # fetches its tasks' arguments there (realtime_batch/payloads.py)
        "RTBATCH_PAYLOAD_STORE",
    }
)  # fmt: skip
#: prefixes of variables task processes also get (locale categories)
TASK_ENV_PREFIXES = ("LC_",)

# Names that look like credentials: never passed to a task, not even with --pass-env.
_CREDENTIAL_NAME = re.compile(
    r"^(?:RTBATCH|AZURE)_|KEY|SECRET|PASSW|TOKEN|SIGNATURE|CONNECTION_?STRING|CREDENTIAL"
    r"|(?:^|_)SAS(?:_|$)",
    re.IGNORECASE,
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PR_SET_DUMPABLE = 4

# Set by ``scrub_environ`` in a worker: the names the engine let through (for a JVM).
_passed: tuple[str, ...] = ()


def check_pass_env(names: Iterable[str]) -> tuple[str, ...]:
    """Validate ``--pass-env`` names; return them as a tuple.

    Raises:
        CredentialError: a name is not a variable name, or looks like a credential
            (``RTBATCH_*``, ``AZURE_*``, or holding KEY, SECRET, PASSWORD, TOKEN, SAS,
            SIGNATURE, CONNECTION_STRING or CREDENTIAL).
    """
    checked = tuple(names)
    for name in checked:
        if not _NAME.fullmatch(name):
            raise CredentialError(f"--pass-env {name!r}: not an environment variable name")
        if name not in TASK_ENV_NAMES and _CREDENTIAL_NAME.search(name):
            raise CredentialError(
                f"--pass-env {name}: the name looks like a credential, and credentials are "
                "never given to task processes (give tasks a file instead)"
            )
    return checked


def task_environment(
    source: Mapping[str, str] | None = None, pass_env: Iterable[str] | None = None
) -> dict[str, str]:
    """The environment of a task process: the allowlisted variables of ``source``.

    Args:
        source: the environment to filter (default: ``os.environ``).
        pass_env: more names to keep (checked with :func:`check_pass_env`); default:
            those the engine passed to this worker (see :func:`scrub_environ`).
    """
    env = os.environ if source is None else source
    extra = set(_passed if pass_env is None else check_pass_env(pass_env))
    return {
        name: value
        for name, value in env.items()
        if name in TASK_ENV_NAMES or name.startswith(TASK_ENV_PREFIXES) or name in extra
    }


def scrub_environ(pass_env: Iterable[str] = ()) -> None:
    """Reduce this process's ``os.environ`` to :func:`task_environment` (the worker's entry).

    The engine already starts the worker with that environment; this keeps the rule
    when a worker is started another way, and records ``pass_env`` for the JVMs the
    worker starts.
    """
    global _passed
    _passed = check_pass_env(pass_env)
    keep = task_environment(os.environ, _passed)
    for name in [n for n in os.environ if n not in keep]:
        del os.environ[name]


def read_credential_file(path: str | os.PathLike[str]) -> str:
    """The credential held by a private file (``-``: standard input), stripped.

    Raises:
        CredentialError: the file cannot be read, is empty, or can be read by its group
            or by others (it must be mode 0600 or stricter).
    """
    if str(path) == "-":
        text = sys.stdin.read()
        where = "standard input"
    else:
        file = Path(path)
        try:
            with file.open() as handle:
                mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
                if mode & 0o077:
                    raise CredentialError(
                        f"credential file {file} has mode {mode:04o}: it must not be readable "
                        f"by its group or others (chmod 600 {file})"
                    )
                text = handle.read()
        except OSError as exc:
            raise CredentialError(f"cannot read credential file {file}: {exc.strerror}") from None
        where = str(file)
    value = text.strip()
    if not value:
        raise CredentialError(f"the credential in {where} is empty")
    return value


def forget_environment_variables(names: Iterable[str]) -> dict[str, str]:
    """Remove ``names`` from ``os.environ`` and blank them in ``/proc/self/environ``.

    Returns the removed values. Removing a variable from ``os.environ`` leaves its
    text in the block the kernel shows as ``/proc/PID/environ``; on Linux that text is
    overwritten with NULs too (best effort: a failure is logged).
    """
    removed = {name: os.environ.pop(name) for name in names if name in os.environ}
    if removed and sys.platform.startswith("linux"):
        try:
            _blank_initial_environ(set(removed))
        except (OSError, ValueError, IndexError) as exc:
            logger.warning("could not blank %s in /proc/self/environ: %s", sorted(removed), exc)
    return removed


def _blank_initial_environ(names: set[str]) -> None:
    text = Path("/proc/self/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state) on
    start, end = int(fields[50 - 3]), int(fields[51 - 3])  # env_start, env_end
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(start)
        block = mem.read(end - start)
        offset = 0
        for entry in block.split(b"\0"):
            name = entry.partition(b"=")[0].decode(errors="replace")
            if name in names:
                mem.seek(start + offset)
                mem.write(b"\0" * len(entry))
            offset += len(entry) + 1


def deny_tracing() -> None:
    """Make this process non-dumpable (Linux): same-user processes cannot read its memory.

    Without it a task, which runs as the engine's user, could read the engine's
    ``/proc/PID/environ`` and ``/proc/PID/mem`` (and so its credential). Root still can:
    run engines as an unprivileged user. Also turns off core dumps of the engine.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
                logger.warning("prctl(PR_SET_DUMPABLE, 0) failed: errno %d", ctypes.get_errno())
