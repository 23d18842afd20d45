"""The reduce step of the Monte Carlo workflow: combine the samples' counts into pi.

A task module in the ``run`` style. In a workflow it takes the futures of the
``pi_task.py`` samples (examples/pi/) as its argument; the session sends it once they
are done, with their values (``{"hits", "samples"}`` each) in their place.
"""

from __future__ import annotations


def run(parts: list[dict[str, int]]) -> dict[str, float]:
    """Sum the parts' hits and samples; return them with the estimate of pi.

    Raises:
        ValueError: no samples at all.
    """
    hits = sum(int(part["hits"]) for part in parts)
    samples = sum(int(part["samples"]) for part in parts)
    if samples <= 0:
        raise ValueError("no samples to combine")
    return {"pi": 4.0 * hits / samples, "hits": hits, "samples": samples, "parts": len(parts)}
