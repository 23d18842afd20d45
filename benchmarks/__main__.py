"""``python -m benchmarks``: run the side-by-side benchmarks."""

from __future__ import annotations

from benchmarks.cli import bench

if __name__ == "__main__":
    bench(prog_name="python -m benchmarks")
