"""Command resolution: only plain files inside the tasks directory, never a shell."""

from __future__ import annotations

import os

import pytest
from engine_helpers import TASKS

from realtime_batch.engine import java_runner
from realtime_batch.engine.tasks import (
    CommandNotFoundError,
    InvalidCommandError,
    resolve_command,
)

REJECTED = [
    "/etc/passwd.py",
    "../engine/tasks/noop.py",
    "sub/../noop.py",
    "..",
    "noop.py; rm -rf /",
    "noop.py && echo hi",
    "python noop.py",
    "$(whoami).py",
    "`id`.py",
    "noop.py|cat",
    ".hidden.py",
    "noop.py\n",
    "a\\b.py",
    "C:\\tasks\\noop.py",
    "",
]


@pytest.mark.parametrize("command", REJECTED)
def test_unsafe_commands_are_rejected(command):
    with pytest.raises(InvalidCommandError):
        resolve_command(command, TASKS)


@pytest.mark.parametrize("command", ["noop.sh", "noop.exe", "noop.pyc"])
def test_other_extensions_are_rejected(command):
    with pytest.raises(InvalidCommandError, match="unsupported file type"):
        resolve_command(command, TASKS)


def test_missing_file_is_not_found():
    with pytest.raises(CommandNotFoundError):
        resolve_command("does_not_exist.py", TASKS)


def test_resolution(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mod.py").write_text("")
    (tmp_path / "tool.jar").write_bytes(b"")
    assert resolve_command("sub/mod.py", tmp_path) == (
        "py",
        (tmp_path / "sub" / "mod.py").resolve(),
    )
    assert resolve_command("sub/mod", tmp_path)[0] == "py"
    assert resolve_command("tool.jar", tmp_path) == ("jar", (tmp_path / "tool.jar").resolve())


def test_symlink_escaping_the_tasks_dir_is_rejected(tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    os.symlink(outside, tasks / "link.py")
    with pytest.raises(InvalidCommandError, match="outside"):
        resolve_command("link.py", tasks)


def test_java_runner_uses_the_same_rules(tmp_path):
    with pytest.raises(InvalidCommandError):
        java_runner("../pi.jar", tasks_dir=tmp_path)
    with pytest.raises(CommandNotFoundError):
        java_runner("pi.jar", tasks_dir=tmp_path)


@pytest.mark.parametrize(
    ("command", "error_type"),
    [
        ("unknown.py", "CommandNotFoundError"),
        ("../tasks/noop.py", "InvalidCommandError"),
        ("/bin/sh", "InvalidCommandError"),
        ("noop.py; touch pwned", "InvalidCommandError"),
        ("noop.txt", "InvalidCommandError"),
    ],
)
def test_bad_commands_become_error_results(harness, command, error_type):
    harness.engine()
    harness.submit(command)
    result = harness.result()
    assert result.status == "error"
    assert result.error.type == error_type
    assert command.strip() in result.error.message
    assert not (harness.work_dir / "pwned").exists()
