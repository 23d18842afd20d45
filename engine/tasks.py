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
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "KIND_JAR",
    "KIND_PYTHON",
    "CommandError",
    "CommandNotFoundError",
    "InvalidCommandError",
    "TaskContractError",
    "TaskModuleCache",
    "TaskReportedError",
    "call_task",
    "resolve_command",
    "resolve_in_dir",
]

KIND_PYTHON = "py"
KIND_JAR = "jar"
_KINDS = {".py": KIND_PYTHON, ".jar": KIND_JAR}

# One or more path components of safe characters; no component starts with a dot,
# so ".", ".." and hidden files are impossible.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.+\-]*)*\Z")


class CommandError(Exception):
    """A command that cannot be run; its class name is the result's error type."""


class InvalidCommandError(CommandError):
    """The command is not a plain relative file name inside the tasks directory."""


class CommandNotFoundError(CommandError):
    """The command names no file in the tasks directory."""


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
    """Imports task modules once and reloads a module when its file changes (mtime or size)."""

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
