"""The logs a ``LocalPool`` leaves in its directory: ``broker.log`` and ``node-N/engine.log``.

Read by ``rtbatch logs --local``. A pool removes its temporary directory on close
unless it was made with ``keep_logs=True`` or a ``root=`` of your choosing.
"""

from __future__ import annotations

import tempfile
from collections import deque
from pathlib import Path

from realtime_batch.orchestrator.pool import OrchestratorError

__all__ = ["POOL_DIR_PREFIX", "latest_pool_dir", "pool_log_files", "tail"]

#: Prefix of the temporary directories LocalPool makes.
POOL_DIR_PREFIX = "rtbatch-pool-"


def latest_pool_dir(parent: Path | None = None) -> Path:
    """The most recently modified ``rtbatch-pool-*`` directory in the temp directory.

    Raises:
        OrchestratorError: there is none.
    """
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    found = [p for p in parent.glob(POOL_DIR_PREFIX + "*") if p.is_dir()]
    if not found:
        raise OrchestratorError(
            f"no LocalPool directory ({POOL_DIR_PREFIX}*) in {parent}: give --pool-dir, or "
            "make the pool with keep_logs=True (or root=DIR) so its logs outlive it"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def _node_number(path: Path) -> int:
    return int(path.parent.name.rpartition("-")[2])


def pool_log_files(root: Path, node: int | None = None) -> list[Path]:
    """``broker.log`` (unless ``node`` is given) and each node's ``engine.log``, by node.

    Raises:
        OrchestratorError: ``root`` is not a pool directory, or it has no such node.
    """
    if not root.is_dir():
        raise OrchestratorError(f"{root} is not a directory")
    engines = sorted(
        (p for p in root.glob("node-*/engine.log") if p.parent.name[5:].isdigit()),
        key=_node_number,
    )
    if node is not None:
        engines = [p for p in engines if _node_number(p) == node]
        if not engines:
            raise OrchestratorError(f"{root} has no node-{node}/engine.log")
        return engines
    broker = [root / "broker.log"] if (root / "broker.log").is_file() else []
    files = broker + engines
    if not files:
        raise OrchestratorError(f"{root} holds no LocalPool logs (broker.log, node-*/engine.log)")
    return files


def tail(path: Path, lines: int | None) -> list[str]:
    """The last ``lines`` lines of ``path`` (all with None), without their newlines."""
    with path.open(encoding="utf-8", errors="replace") as file:
        kept = deque(file, maxlen=lines) if lines is not None else list(file)
    return [line.rstrip("\n") for line in kept]
