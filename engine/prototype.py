"""The prototype's task-side names, for task modules written for it.

Prototype task modules start with ``from engine.azbatchengine import
AzureBatchEngine``. In a task worker, ``install_finder`` appends a meta-path
finder at the end of ``sys.meta_path`` that serves a top-level ``engine``
package and its ``engine.azbatchengine`` module, whose ``AzureBatchEngine`` is
the worker's ``TaskContext`` (the ``engine`` object ``do_action`` receives, with
``java_runner``). Being last, it serves them only when no other finder knows an
``engine``: a user's own ``engine`` package (staged beside the task modules, or
installed) is imported instead, and then ``engine.azbatchengine`` is whatever
that package holds. Nothing else is served, and the engine's own code never
imports these names.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["PACKAGE", "PrototypeFinder", "install_finder"]

#: The top-level package name prototype task modules import from.
PACKAGE = "engine"
_MODULE = f"{PACKAGE}.azbatchengine"


class PrototypeFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``engine`` and ``engine.azbatchengine`` when nothing else provides them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == PACKAGE:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        if fullname == _MODULE and getattr(sys.modules.get(PACKAGE), "__loader__", None) is self:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None  # a user's own engine package: its submodules are its own

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # a plain module

    def exec_module(self, module: ModuleType) -> None:
        if module.__name__ == PACKAGE:
            module.__doc__ = "realtime-batch's stand-in for the prototype's engine package."
            module.__path__ = []  # no files below it: only what this finder serves
            return
        from .context import TaskContext

        module.__doc__ = "The prototype's AzureBatchEngine: realtime-batch's TaskContext."
        module.AzureBatchEngine = TaskContext  # type: ignore[attr-defined]
        module.__all__ = ["AzureBatchEngine"]  # type: ignore[attr-defined]


def install_finder() -> None:
    """Append the finder to ``sys.meta_path`` once (in the process that runs task code)."""
    if not any(isinstance(finder, PrototypeFinder) for finder in sys.meta_path):
        sys.meta_path.append(PrototypeFinder())
