"""docs/servicebus.md quotes the transport's timing defaults: they must be the code's."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from realtime_batch.transport.servicebus import ServiceBusTransport

DOC = Path(__file__).resolve().parents[2] / "docs" / "servicebus.md"


def _defaults() -> dict[str, float]:
    params = inspect.signature(ServiceBusTransport.__init__).parameters
    names = ("poll_wait", "receive_slice", "settle_slice", "batch_gap")
    return {name: params[name].default for name in names}


def _seconds(text: str) -> float:
    value, unit = text.split()
    return float(value) / (1000 if unit == "ms" else 1)


def test_quoted_timings_are_the_defaults():
    doc = DOC.read_text(encoding="utf-8")
    quoted = re.findall(r"`(poll_wait|receive_slice|settle_slice|batch_gap)` \(([\d.]+ m?s)\)", doc)
    quoted += re.findall(r"`(receive_slice|settle_slice)` ([\d.]+ m?s)", doc)
    assert {name for name, _ in quoted} >= {"poll_wait", "receive_slice", "settle_slice"}
    defaults = _defaults()
    for name, text in quoted:
        assert _seconds(text) == defaults[name], f"docs/servicebus.md: {name} {text}"
