"""The README's examples, run as written, so that the README cannot drift from the code.

The code blocks and the command table are read from README.md at test time (by section
heading, never by line number) and run unchanged.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import re
import shutil
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

import realtime_batch as rb
from realtime_batch.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PI = ROOT / "examples" / "pi"

HAS_JDK = bool(shutil.which("javac") and shutil.which("java") and shutil.which("jar"))


def _pi_run(*args, **kwargs):
    """examples/pi/pi_task.py's run(), called here: the value the example must print."""
    spec = importlib.util.spec_from_file_location("readme_pi_task", PI / "pi_task.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(*args, **kwargs)


def _section(heading: str) -> str:
    """The text of the README's ``## heading`` section, up to the next ``## `` heading."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(heading)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def _python_block(heading: str) -> str:
    """The first ```python fenced block of a README section."""
    blocks = _python_blocks(heading)
    assert blocks, f"README.md section '{heading}' has no ```python block"
    return blocks[0]


def _python_blocks(heading: str) -> list[str]:
    """Every ```python fenced block of a README section, in order."""
    return re.findall(r"^```python[ \t]*\n(.*?)^```", _section(heading), re.M | re.S)


def _command_table_verbs() -> list[str]:
    """First word after ``rtbatch`` of every command in the README's command table."""
    verbs: list[str] = []
    for line in _section("Command line").splitlines():
        if not line.startswith("|"):
            continue
        first_cell = line.strip("|").split("|")[0]
        for verb in re.findall(r"`rtbatch ([A-Za-z][\w-]*)", first_cell):
            if verb not in verbs:
                verbs.append(verb)
    return verbs


def _command_table_subcommands() -> list[tuple[str, str]]:
    """``(verb, sub)`` pairs the table names, e.g. ``pool create/use`` -> pool create, pool use."""
    pairs: list[tuple[str, str]] = []
    for line in _section("Command line").splitlines():
        if not line.startswith("|"):
            continue
        first_cell = line.strip("|").split("|")[0]
        for verb, subs in re.findall(r"`rtbatch ([a-z][\w-]*) ([a-z][\w/-]*)", first_cell):
            pairs.extend((verb, sub) for sub in subs.split("/"))
    return pairs


# --- "The Python API" ----------------------------------------------------------------


def test_python_api_block_is_found():
    code = _python_block("The Python API")
    assert code.startswith("import realtime_batch as rb\n")
    assert 'rb.LocalPool(engines=2, task_files=["examples/pi/pi_task.py"])' in code


@pytest.mark.timeout(90, method="signal")  # raises inside the block, so its `with`s clean up
def test_python_api_example_prints_what_its_comments_promise(
    no_leaked_processes, monkeypatch, capsys
):
    code = _python_block("The Python API")
    monkeypatch.chdir(ROOT)  # the block names examples/pi/pi_task.py relative to the checkout
    exec(compile(code, "README.md:The Python API", "exec"), {"__name__": "readme_example"})
    lines = capsys.readouterr().out.splitlines()

    assert len(lines) == 1 + 100 + 1, lines[:5]

    # print(future.result())  # {"hits": ..., "samples": ...}
    first = ast.literal_eval(lines[0])
    assert isinstance(first, dict) and set(first) == {"hits", "samples"}
    assert first == _pi_run(100_000, seed=1)  # seeded, so the exact value is known

    # for f in rb.Session.as_completed(futures): print(f.result())  -> 100 results
    mapped = [ast.literal_eval(line) for line in lines[1:101]]
    assert all(set(v) == {"hits", "samples"} for v in mapped)
    assert all(v["samples"] == 10_000 and 0 <= v["hits"] <= 10_000 for v in mapped)

    # print(session.results())  # every Result that arrived since the last call
    results = eval(lines[-1], {"__builtins__": {}, "Result": rb.Result})
    assert isinstance(results, list)
    assert all(isinstance(r, rb.Result) for r in results)
    assert len(results) == 101  # no earlier call: the submit and the 100 mapped tasks
    assert len({r.task_id for r in results}) == 101
    assert all(r.ok and r.status == "ok" and r.error is None for r in results)
    values = sorted(str(r.value) for r in results)
    assert values == sorted(str(v) for v in [first, *mapped])


# --- "Writing a task" ----------------------------------------------------------------


def _task_block(name: str) -> str:
    """The "Writing a task" block that starts with ``# name``."""
    blocks = [b for b in _python_blocks("Writing a task") if b.startswith(f"# {name}")]
    assert len(blocks) == 1, f"README 'Writing a task' has {len(blocks)} blocks for {name}"
    return blocks[0]


@pytest.fixture
def tasks_dir(tmp_path) -> Path:
    """The README's task modules, written unchanged to a tasks directory."""
    for name in ("greet.py", "pi_action.py"):
        (tmp_path / name).write_text(_task_block(name), encoding="utf-8")
    return tmp_path


@contextlib.contextmanager
def _memory_session(task_files):
    """A session on an in-process pool (``memory://``, engines as threads)."""
    transport = f"memory://readme-{uuid.uuid4().hex}"
    with rb.LocalPool(transport=transport, task_files=task_files) as pool, rb.Session(pool) as s:
        yield s


def test_greet_block_is_the_example_file():
    """The README's run-style task is examples/hello/greet.py, word for word."""
    example = (ROOT / "examples" / "hello" / "greet.py").read_text(encoding="utf-8")
    assert _task_block("greet.py") == example


@pytest.mark.timeout(60)
def test_greet_run_style_via_session(tasks_dir):
    """greet.py does what its comment says, through a session, keyword included."""
    with _memory_session([tasks_dir / "greet.py"]) as session:
        assert session.submit("greet.py", "Ada").result(timeout=30) == "hello, Ada"
        assert session.submit("greet.py", "Ada", greeting="hi").result(timeout=30) == "hi, Ada"


@pytest.mark.java
@pytest.mark.skipif(not HAS_JDK, reason="no JDK (javac, java, jar) on PATH")
@pytest.mark.timeout(90)
def test_pi_action_do_action_runs_the_jar(tasks_dir):
    """pi_action.py's do_action runs the staged pi.jar with the task's arguments."""
    from realtime_batch.engine import build_jar, java_runner

    jar = build_jar(PI / "Pi.java", tasks_dir / "pi.jar")
    with _memory_session([tasks_dir / "pi_action.py", jar]) as session:
        value = session.submit("pi_action.py", 2000, 7).result(timeout=60)
    expected = java_runner("pi.jar", 2000, 7, tasks_dir=tasks_dir)  # seeded: same output
    assert value == expected
    hits, samples = map(int, value.split())
    assert samples == 2000 and 0 <= hits <= samples


@pytest.mark.timeout(60)
def test_module_with_both_styles_is_called_through_do_action(tasks_dir):
    """The README's last sentence of the section (and docs/tasks.md)."""
    both = tasks_dir / "both.py"
    both.write_text(
        _task_block("greet.py") + "\n\ndef do_action(engine, args):\n    return 'action', None\n",
        encoding="utf-8",
    )
    with _memory_session([both]) as session:
        assert session.submit("both.py", "Ada").result(timeout=30) == "action"


# --- "Command line" ------------------------------------------------------------------

VERBS = _command_table_verbs()
SUBCOMMANDS = _command_table_subcommands()


def test_command_table_is_parsed():
    assert len(VERBS) >= 5, VERBS
    assert {"demo", "broker", "engine"} <= set(VERBS)
    assert not set(VERBS) - set(COMMANDS), f"README names unknown commands: {VERBS}"


@pytest.mark.parametrize("verb", VERBS)
def test_command_help(verb):
    result = CliRunner().invoke(main, [verb, "--help"], prog_name="rtbatch")
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"Usage: rtbatch {verb}" in result.output


@pytest.mark.parametrize("verb,sub", SUBCOMMANDS, ids=[f"{v}-{s}" for v, s in SUBCOMMANDS])
def test_subcommand_help(verb, sub):
    result = CliRunner().invoke(main, [verb, sub, "--help"], prog_name="rtbatch")
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"Usage: rtbatch {verb} {sub}" in result.output
