"""Every RTBATCH_* variable the product reads is documented in docs/configuration.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("realtime_batch", "transport", "engine", "orchestrator", "emulator")


def test_every_rtbatch_variable_in_the_product_is_documented():
    named = {
        name
        for folder in PRODUCT
        for source in (ROOT / folder).rglob("*.py")
        for name in re.findall(r"\bRTBATCH_[A-Z][A-Z0-9_]*[A-Z0-9]\b", source.read_text())
    }
    assert "RTBATCH_TRANSPORT" in named  # the scan finds what is there
    documented = set(
        re.findall(r"`(RTBATCH_[A-Z0-9_]+)`", (ROOT / "docs/configuration.md").read_text())
    )
    assert not named - documented, f"undocumented: {sorted(named - documented)}"
