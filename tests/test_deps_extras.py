"""Runtime dependencies are what product code imports: psutil serves tests and
benchmarks only (the dev and bench extras), and no product module imports it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TEST_ONLY = "psutil"


def _names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = requirement.split(";")[0]
        for mark in "<>=![ ":
            name = name.split(mark)[0]
        names.add(name.strip().lower())
    return names


def _product_files() -> list[Path]:
    dirs = PYPROJECT["tool"]["setuptools"]["package-dir"].values()
    return sorted(p for d in set(dirs) for p in (ROOT / d).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level modules a file imports, anywhere in it (lazy imports and
    ``importlib.import_module("name")`` included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value).split(".")[0])
    return found


def test_psutil_is_a_dev_and_bench_dependency_only():
    project = PYPROJECT["project"]
    assert TEST_ONLY not in _names(project["dependencies"])
    assert TEST_ONLY in _names(project["optional-dependencies"]["dev"])
    assert TEST_ONLY in _names(project["optional-dependencies"]["bench"])


def test_no_product_module_imports_psutil():
    files = _product_files()
    assert len(files) > 20, files  # the scan reads the packages
    users = [str(p.relative_to(ROOT)) for p in files if TEST_ONLY in _imports(p)]
    assert users == [], f"product modules import {TEST_ONLY} (a dev-only dependency): {users}"
