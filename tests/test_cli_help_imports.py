"""``rtbatch --help`` imports no sub-command and nothing the sub-commands need (#21).

The group's commands are imported on first use (``LazyGroup``); the help lists them
from their one-line descriptions. Checked in a fresh interpreter's ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

#: what ``rtbatch --help`` must not import: the sub-commands' code and what they use
NOT_FOR_HELP = (
    "realtime_batch.engine",
    "realtime_batch.transport",
    "realtime_batch.orchestrator",
    "realtime_batch.emulator",
    "realtime_batch.config",
    "azure",
    "rich",
    "zmq",
    "logging",
)

CODE = """
import json, sys
from realtime_batch.cli import main
try:
    main(["--help"], prog_name="rtbatch")
except SystemExit as exc:
    code = exc.code
print("MODULES " + json.dumps([code, sorted(sys.modules)]))
"""


def test_rtbatch_help_lists_the_commands_without_importing_them():
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    help_text, _, last = done.stdout.rpartition("MODULES ")
    code, modules = json.loads(last)
    assert code == 0
    assert "engine" in help_text and "broker" in help_text
    loaded = [m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_FOR_HELP)]
    assert loaded == []
