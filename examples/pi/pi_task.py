"""Monte Carlo estimate of pi in pure Python (the same maths as ``Pi.java``).

A task module in the ``run`` style: ``session.submit("pi_task.py", samples, seed)``.
"""

from __future__ import annotations

import random


def run(samples: int, seed: int | None = None) -> dict[str, int]:
    """Draw ``samples`` points in the unit square; count those inside the quarter circle.

    Returns:
        ``{"hits": ..., "samples": ...}``; pi is about ``4 * hits / samples``.
    """
    samples = int(samples)
    if samples < 0:
        raise ValueError("samples must not be negative")
    draw = random.Random(seed).random
    hits = 0
    for _ in range(samples):
        x, y = draw(), draw()
        if x * x + y * y <= 1.0:
            hits += 1
    return {"hits": hits, "samples": samples}
