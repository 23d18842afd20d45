"""Task commands: resolving a ``command`` inside the tasks directory and loading task modules.

A command names a file in the staged tasks directory: a Python task module
(``hello.py``; a bare ``hello`` means ``hello.py``) or a jar (``pi.jar``).
Absolute paths, ``..`` components, whitespace and shell metacharacters are
rejected; the engine never runs a shell.

Python task modules follow one of two contracts:

* ``do_action(engine, args) -> (result, error)`` (the seed's): ``args`` is the
  task's positional argument list; ``error`` falsy or ``"no error"`` means success.
* ``run(*args, **kwargs) -> value``.

A module that defines both is called through ``do_action``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "JAR_KWARGS",
    "KIND_JAR",
    "KIND_PYTHON",
    "CommandError",
    "CommandNotFoundError",
    "InvalidCommandError",
    "JvmOptionPolicy",
    "TaskContractError",
    "TaskModuleCache",
    "TaskReportedError",
    "call_task",
    "check_host_options",
    "check_jar_kwargs",
    "parse_size",
    "resolve_command",
    "resolve_in_dir",
]

KIND_PYTHON = "py"
KIND_JAR = "jar"
_KINDS = {".py": KIND_PYTHON, ".jar": KIND_JAR}

# One or more path components of safe characters; no component starts with a dot,
# so ".", ".." and hidden files are impossible.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.+\-]*)*\Z")


# -Xmx/-Xms/-Xss with a plain number and an optional unit, nothing before or after.
_SIZE_OPTION = re.compile(r"-X(mx|ms|ss)([1-9][0-9]{0,15})([kKmMgGtT]?)\Z")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: The largest thread stack (``-Xss``) a message may ask for.
MAX_THREAD_STACK = 1 << 30


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return 1 << 40


def parse_size(text: str) -> int:
    """Bytes in a size such as ``"512m"``, ``"16M"``, ``"2g"`` or ``"4096"`` (binary units).

    Raises:
        ValueError: not a positive whole number with an optional k/m/g/t unit.
    """
    match = re.fullmatch(r"([1-9][0-9]{0,15})([kKmMgGtT]?)[bB]?", text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size such as 512m, 16M or 2g")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def _format_size(size: int) -> str:
    for unit in ("t", "g", "m", "k"):
        if size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return str(size)


class CommandError(Exception):
    """A command that cannot be run; its class name is the result's error type."""


class InvalidCommandError(CommandError):
    """The command is not a plain relative file name inside the tasks directory."""


class CommandNotFoundError(CommandError):
    """The command names no file in the tasks directory."""


class JvmOptionPolicy:
    """Which JVM options a task message may pass with ``jvm_args`` (jar commands).

    A message may set the heap (``-Xmx``, ``-Xms``, at most ``max_heap`` bytes) and
    the thread stack (``-Xss``, at most 1 GiB), written as a plain number with an
    optional ``k``/``m``/``g``/``t`` unit, e.g. ``-Xmx512m``. Nothing else: no
    class path, agent, ``-XX:`` hook, log file or ``@argfile``, so a message never
    chooses what the JVM loads or runs. Only the engine's operator can widen the
    list (``rtbatch engine --allow-jvm-option PATTERN``), never a message.

    Args:
        max_heap: largest ``-Xmx``/``-Xms`` in bytes; None: this machine's memory.
        allow: regular expressions (matched against the whole option) of further
            options this engine accepts.

    Raises:
        ValueError: ``max_heap`` is not positive or a pattern is not a valid regex.
    """

    def __init__(self, max_heap: int | None = None, allow: Iterable[str] = ()) -> None:
        self.max_heap = _physical_memory() if max_heap is None else int(max_heap)
        if self.max_heap <= 0:
            raise ValueError(f"max_heap must be positive, got {max_heap!r}")
        self.allow = tuple(allow)
        try:
            self._patterns = [re.compile(pattern) for pattern in self.allow]
        except re.error as exc:
            raise ValueError(f"invalid JVM option pattern {exc.pattern!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"JvmOptionPolicy(max_heap={self.max_heap}, allow={self.allow!r})"

    def as_options(self) -> dict[str, Any]:
        """The policy as JSON-able keyword arguments (for a direct-mode worker)."""
        return {"max_heap": self.max_heap, "allow": list(self.allow)}

    def check(self, jvm_args: Any) -> list[str]:
        """Return ``jvm_args`` as a list if every option is allowed.

        Raises:
            InvalidCommandError: ``jvm_args`` is not a list of strings, or names an
                option that is not allowed (the message names it).
        """
        if not isinstance(jvm_args, (list, tuple)):
            raise InvalidCommandError(
                f"jvm_args must be a list of JVM options, got {type(jvm_args).__name__}"
            )
        for option in jvm_args:
            if not isinstance(option, str):
                raise InvalidCommandError(f"JVM option {option!r} is not a string")
            self._check_one(option)
        return list(jvm_args)

    def _check_one(self, option: str) -> None:
        if any(pattern.fullmatch(option) for pattern in self._patterns):
            return
        match = _SIZE_OPTION.match(option)
        if match is None:
            raise InvalidCommandError(
                f"JVM option {option!r} is not allowed: a task may pass only -Xmx/-Xms "
                f"(at most {_format_size(self.max_heap)}) and -Xss (at most "
                f"{_format_size(MAX_THREAD_STACK)}), e.g. '-Xmx512m'"
                + (", or options matching this engine's --allow-jvm-option" if self.allow else "")
            )
        kind, number, unit = match.groups()
        limit = MAX_THREAD_STACK if kind == "ss" else self.max_heap
        if int(number) * _SIZE_UNITS[unit.lower()] > limit:
            raise InvalidCommandError(
                f"JVM option {option!r} is not allowed: over this engine's maximum of "
                f"{_format_size(limit)}"
            )


#: keywords a jar task may carry: sizing options, and how to run the same staged jar
JAR_KWARGS = frozenset({"jvm_args", "cold", "isolate"})


def check_jar_kwargs(kwargs: Mapping[str, Any], policy: JvmOptionPolicy) -> None:
    """Refuse a jar task's keywords but allowed ``jvm_args`` and boolean ``cold``/``isolate``.

    Raises:
        InvalidCommandError: another keyword, or a JVM option ``policy`` refuses.
    """
    unknown = set(kwargs) - JAR_KWARGS
    if unknown:
        raise InvalidCommandError(
            f"jar tasks accept only {', '.join(sorted(JAR_KWARGS))}=, got {sorted(unknown)}"
        )
    for flag in ("cold", "isolate"):
        if not isinstance(kwargs.get(flag, False), bool):
            raise InvalidCommandError(f"{flag}= must be true or false, got {kwargs[flag]!r}")
    if "jvm_args" in kwargs:
        policy.check(kwargs["jvm_args"])


class TaskContractError(Exception):
    """A task module does not follow the ``do_action``/``run`` contract."""


class TaskReportedError(Exception):
    """A ``do_action`` task returned an error instead of raising."""


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidCommandError(f"{what} must be a non-empty string, got {name!r}")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InvalidCommandError(f"{what} {name!r}: absolute paths are not allowed")
    if any(part == ".." for part in re.split(r"[/\\]", name)):
        raise InvalidCommandError(f"{what} {name!r}: '..' path components are not allowed")
    if not _SAFE_PATH.match(name):
        raise InvalidCommandError(
            f"{what} {name!r}: only a relative file name of letters, digits, '_', '-', '+' "
            "and '.' is allowed (no whitespace, shell metacharacters or hidden files)"
        )


def resolve_in_dir(name: str, directory: str | os.PathLike[str], *, what: str = "command") -> Path:
    """Return the real path of the file ``name`` inside ``directory``.

    Raises:
        InvalidCommandError: ``name`` is absolute, has ``..``, whitespace or shell
            characters, or resolves (through a symlink) outside ``directory``.
        CommandNotFoundError: no such file.
    """
    _check_name(name, what)
    root = Path(os.path.realpath(directory))
    path = Path(os.path.realpath(root / name))
    if root != path and root not in path.parents:
        raise InvalidCommandError(f"{what} {name!r} resolves outside the tasks directory")
    if not path.is_file():
        raise CommandNotFoundError(f"{what} {name!r} not found in the tasks directory {root}")
    return path


def resolve_command(command: str, tasks_dir: str | os.PathLike[str]) -> tuple[str, Path]:
    """Resolve a task command to ``(kind, path)``; ``kind`` is ``"py"`` or ``"jar"``.

    Raises:
        InvalidCommandError: unsafe name or unsupported file type.
        CommandNotFoundError: no such file in ``tasks_dir``.
    """
    _check_name(command, "command")
    suffix = os.path.splitext(command)[1].lower()
    if not suffix:
        command, suffix = command + ".py", ".py"
    kind = _KINDS.get(suffix)
    if kind is None:
        raise InvalidCommandError(
            f"command {command!r}: unsupported file type {suffix!r} (expected .py or .jar)"
        )
    return kind, resolve_in_dir(command, tasks_dir)


def _module_name(path: str) -> str:
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    return f"rtbatch_task_{stem}_{zlib.crc32(path.encode()) & 0xFFFFFF:06x}"


class TaskModuleCache:
    """Imports task modules once and reloads a module when its file changes (mtime or size).

    Task modules written for the prototype may import ``engine.azbatchengine``: the
    worker installs the finder that serves it (``engine.prototype``) before any loads.
    """

    def __init__(self) -> None:
        self._modules: dict[str, tuple[int, int, ModuleType]] = {}

    def load(self, path: str) -> ModuleType:
        """Return the module at ``path`` (imported on first use, re-imported when changed)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise CommandNotFoundError(f"task file {path!r} no longer exists") from None
        cached = self._modules.get(path)
        if cached is not None and cached[0] == st.st_mtime_ns and cached[1] == st.st_size:
            return cached[2]
        name = _module_name(path)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise TaskContractError(f"cannot import task module {path!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickle look modules up here
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            self._modules.pop(path, None)
            raise
        self._modules[path] = (st.st_mtime_ns, st.st_size, module)
        return module


def _is_no_error(error: Any) -> bool:
    if not error:
        return True
    return isinstance(error, str) and error.strip().lower() == "no error"


def call_task(module: ModuleType, context: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run a task module's entry point and return its value.

    ``do_action`` is preferred when a module defines both entry points.

    Raises:
        TaskReportedError: ``do_action`` returned an error.
        TaskContractError: the module has no entry point or ``do_action`` returned
            something other than a ``(result, error)`` pair.
    """
    do_action = getattr(module, "do_action", None)
    if callable(do_action):
        if kwargs:
            raise TaskContractError(
                "do_action tasks take positional arguments only; got keyword arguments "
                f"{sorted(kwargs)} (define run(*args, **kwargs) to accept them)"
            )
        outcome = do_action(context, list(args))
        if not isinstance(outcome, (tuple, list)) or len(outcome) != 2:
            raise TaskContractError(
                f"do_action must return a (result, error) pair, got {type(outcome).__name__}"
            )
        result, error = outcome
        if not _is_no_error(error):
            raise TaskReportedError(str(error))
        return result
    run = getattr(module, "run", None)
    if callable(run):
        return run(*args, **kwargs)
    raise TaskContractError(
        f"task module {getattr(module, '__file__', module.__name__)!r} defines neither "
        "do_action(engine, args) nor run(*args, **kwargs)"
    )


def check_host_options(jvm_options: Sequence[str]) -> tuple[str, ...]:
    """The warm JVM host's options as strings; each must be an option (start with ``-``).

    Raises:
        ValueError: a value that is not an option (it would be taken as the main class).
    """
    options = tuple(map(str, jvm_options))
    for option in options:
        if not option.startswith("-") or option in ("-cp", "-classpath", "-jar"):
            raise ValueError(
                f"JVM host option {option!r}: expected a JVM option such as -Xmx1g "
                "(the host chooses its own class path)"
            )
    return options
