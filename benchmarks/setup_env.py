"""What the benchmarks need installed, installed on demand; and the facts of this machine.

* ``ensure_bench_extra`` installs the ``bench`` extra of this checkout into the
  running interpreter's environment when its imports are missing.
* ``ensure_redis_server`` finds ``redis-server``, installing the Debian package when
  it is missing and ``apt-get`` is there.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

import psutil

from benchmarks import ROOT

__all__ = ["ensure_bench_extra", "ensure_redis_server", "machine_facts", "missing_modules"]

log = logging.getLogger(__name__)

#: import name -> what the bench extra provides it for
BENCH_MODULES = {
    "ray": "ray",
    "distributed": "dask",
    "celery": "celery",
    "redis": "celery",
    "matplotlib": "the chart",
    "pyinstrument": "profiling",
}


def missing_modules(names: list[str] | None = None) -> list[str]:
    """Import names of the bench extra that cannot be imported here."""
    return [n for n in (names or list(BENCH_MODULES)) if importlib.util.find_spec(n) is None]


def ensure_bench_extra() -> None:
    """``pip install -e '<checkout>[bench]'`` into this interpreter when imports are missing."""
    missing = missing_modules()
    if not missing:
        return
    log.warning("installing the bench extra (missing: %s)", ", ".join(missing))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[bench]"]
    subprocess.run(command, check=True)
    importlib.invalidate_caches()
    still = missing_modules()
    if still:
        raise RuntimeError(f"the bench extra did not provide: {', '.join(still)}")


def ensure_redis_server() -> str:
    """The path of ``redis-server``, installing the Debian package when missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("redis-server is missing and apt-get is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.warning("installing redis-server with apt-get")
    install = [apt, "install", "-y", "-q", "redis-server"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run([apt, "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("apt-get installed redis-server but it is not on PATH")
    return found


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine_facts() -> dict[str, Any]:
    """Platform, CPU, memory, load, Python and package versions, git commit."""
    versions = {}
    for package in ("realtime-batch", "pyzmq", "orjson", "ray", "dask", "distributed", "celery"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": _git_commit(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
