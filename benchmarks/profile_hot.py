"""Profile the hot path of the throughput workload.

``python -m benchmarks.profile_hot [--system rtbatch-zmq] [-n 20000]`` starts the
system, then runs ``n`` no-op tasks at once while

* pyinstrument samples the client process (submit, sender and listener threads), and
* py-spy (when installed; ``ray[default]`` brings it) samples the worker-side processes
  (broker, engines and their task workers) from outside,

and prints the client's call tree and the hottest functions of each worker-side
process (leaf samples = own time; inclusive samples = time under the function).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.systems import make_system

__all__ = ["main", "summarise_collapsed"]


#: frames on every stack (entry points, thread bootstrap): left out of the inclusive list
_BOILERPLATE = ("<frozen runpy>", "click/core.py", "threading.py:10", "__main__.py", "cli.py")


def summarise_collapsed(path: Path, top: int = 12) -> list[str]:
    """Top functions by leaf and by inclusive samples from py-spy's collapsed stacks."""
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        leaf[frames[-1]] += count
        for frame in set(frames):
            if not any(b in frame for b in _BOILERPLATE):
                inclusive[frame] += count
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} samples; own time:"]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in leaf.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    return lines


def _cpu_by_process() -> dict[str, float]:
    """CPU seconds (user + system) of this process and each descendant, by ``pid command``."""
    found = {}
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = proc.cpu_times()
            label = f"{proc.pid} " + " ".join(proc.cmdline()[1:4])[:70]
        except psutil.Error:
            continue
        found[label] = times.user + times.system
    return found


def _worker_side() -> list[psutil.Process]:
    """Direct children of this process whose tree is the system's workers and broker."""
    return psutil.Process().children(recursive=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="rtbatch-zmq")
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--html", type=Path, help="also write pyinstrument's HTML report here")
    options = parser.parse_args(argv)
    from pyinstrument import Profiler

    system = make_system(options.system)
    system.start()
    spies: list[tuple[str, subprocess.Popen, Path]] = []
    workdir = Path(tempfile.mkdtemp(prefix="rtbatch-profile-"))
    try:
        for _ in range(50):
            system.call("noop")
        py_spy = shutil.which("py-spy") or shutil.which(
            "py-spy", path=os.path.dirname(sys.executable)
        )
        if py_spy:
            for proc in _worker_side():
                label = " ".join(proc.cmdline()[1:4])[:60]
                out = workdir / f"{proc.pid}.txt"
                argv_ = [
                    py_spy,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--subprocesses",
                    "--format",
                    "raw",
                ]
                argv_ += ["--rate", str(options.rate), "--output", str(out), "--nonblocking"]
                argv_ += ["--gil"]  # only samples holding the GIL: CPU work, not waiting
                spy = subprocess.Popen(argv_, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                spies.append((f"pid {proc.pid} {label}", spy, out))
            time.sleep(1.0)  # let py-spy attach
        profiler = Profiler(interval=0.001)
        cpu_before = _cpu_by_process()
        start = time.perf_counter()
        profiler.start()
        system.run_all("noop", [()] * options.n)
        profiler.stop()
        elapsed = time.perf_counter() - start
        cpu_after = _cpu_by_process()
        rate = options.n / elapsed
        print(
            f"{options.system}: {options.n} no-op tasks in {elapsed:.2f} s = {rate:,.0f} tasks/s\n"
        )
        print("CPU seconds used during the run (100% = one core busy the whole run):")
        for label, used in sorted(
            ((k, cpu_after[k] - cpu_before.get(k, 0.0)) for k in cpu_after),
            key=lambda item: -item[1],
        ):
            if used > 0.05:
                print(f"  {used:6.2f} s  {100 * used / elapsed:5.1f}%  {label}")
        print()
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        if options.html:
            options.html.write_text(profiler.output_html())
    finally:
        for _, spy, _ in spies:
            spy.send_signal(signal.SIGINT)
        for label, spy, out in spies:
            try:
                _, err = spy.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                err = b"timed out"
            print(f"\nworker side, {label}:")
            if out.is_file():
                print("\n".join(summarise_collapsed(out)))
            else:
                print(f"  py-spy wrote nothing: {err.decode(errors='replace')[-300:]}")
        system.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
