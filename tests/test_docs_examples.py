"""Every ```python block of docs/*.md runs as written, so the pages cannot drift from the code.

A block runs as a script from the checkout's root, against the real files in
``examples/``. An HTML comment on the line just before a block says otherwise:

* ``<!-- doc-test: session -->``: a fragment that uses ``session``; it runs with
  ``session`` bound to a Session on an in-process pool (``memory://``) that stages
  every file of ``examples/hello``, ``examples/pi`` and ``examples/workflow`` plus the
  page's task blocks (which replace an example file of the same name);
* ``<!-- doc-test: task NAME -->``: a task module; it is staged as ``NAME`` for the
  page's ``session`` blocks and must define ``run`` or ``do_action``;
* ``<!-- doc-test: skip REASON -->``: not run (an Azure account, a running
  service...), with the reason shown in the test report.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

import realtime_batch as rb

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
EXAMPLE_FILES = [
    p
    for d in ("hello", "pi", "workflow")
    for p in sorted((ROOT / "examples" / d).iterdir())
    if p.is_file()
]
_BLOCK = re.compile(
    r"(?:^<!-- doc-test: (?P<mark>[^\n]*?) -->\n)?^```python[ \t]*\n(?P<code>.*?)^```", re.M | re.S
)


def doc_blocks(page: Path) -> list[tuple[str, str, int]]:
    """``(mark, code, line)`` of each python block of ``page`` (mark "" when unmarked)."""
    text = page.read_text(encoding="utf-8")
    return [
        ((m.group("mark") or "").strip(), m.group("code"), text.count("\n", 0, m.start("code")))
        for m in _BLOCK.finditer(text)
    ]


CASES = [
    pytest.param(page, mark, code, id=f"{page.name}:{line}")
    for page in DOCS
    for mark, code, line in doc_blocks(page)
    if not mark.startswith("task ")
]


def test_every_page_with_code_is_covered():
    pages = {p.name for p in DOCS if "```python" in p.read_text(encoding="utf-8")}
    covered = {p.values[0].name for p in CASES} | {
        page.name for page in DOCS for mark, _, _ in doc_blocks(page) if mark.startswith("task ")
    }
    assert pages == covered, f"python blocks not recognised on {sorted(pages - covered)}"


def _task_blocks(page: Path, tasks_dir: Path) -> list[Path]:
    staged = []
    for mark, code, _ in doc_blocks(page):
        if mark.startswith("task "):
            path = tasks_dir / mark.removeprefix("task ").strip()
            path.write_text(code, encoding="utf-8")
            staged.append(path)
    return staged


@pytest.mark.timeout(120, method="signal")  # raises inside the block, so its `with`s clean up
@pytest.mark.parametrize(("page", "mark", "code"), CASES)
def test_doc_block_runs(page, mark, code, tmp_path, monkeypatch, no_leaked_processes):
    if mark.startswith("skip"):
        pytest.skip(mark.removeprefix("skip").strip() or "marked skip")
    assert mark in ("", "session"), f"unknown doc-test mark {mark!r}"
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": f"doc_{page.stem}", "rb": rb}
    compiled = compile(code, f"{page.relative_to(ROOT)}", "exec")
    if mark == "":
        exec(compiled, namespace)
        return
    staged = {p.name: p for p in EXAMPLE_FILES} | {p.name: p for p in _task_blocks(page, tmp_path)}
    pool_options = {"transport": f"memory://docs-{uuid.uuid4().hex}"}
    with (
        rb.LocalPool(task_files=list(staged.values()), **pool_options) as pool,
        rb.Session(pool) as session,
    ):
        namespace["session"] = session
        exec(compiled, namespace)


@pytest.mark.parametrize(
    ("page", "name", "code"),
    [
        pytest.param(page, mark.removeprefix("task ").strip(), code, id=f"{page.name}:{line}")
        for page in DOCS
        for mark, code, line in doc_blocks(page)
        if mark.startswith("task ")
    ],
)
def test_doc_task_block_is_a_task_module(page, name, code):
    namespace: dict = {}
    exec(compile(code, f"{page.name}:{name}", "exec"), namespace)
    assert callable(namespace.get("run")) or callable(namespace.get("do_action"))
