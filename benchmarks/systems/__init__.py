"""Benchmarked systems, looked up by record name through lazy ``"module:Class"`` strings."""

from __future__ import annotations

import importlib

from benchmarks.systems.base import NotApplicableError, System, SystemUnavailableError

__all__ = ["REGISTRY", "NotApplicableError", "System", "SystemUnavailableError", "make_system"]

REGISTRY: dict[str, str] = {
    "raw-zmq": "benchmarks.systems.raw_zmq:RawZmqSystem",
    "rtbatch-memory": "benchmarks.systems.rtbatch:RtbatchMemory",
    "rtbatch-zmq": "benchmarks.systems.rtbatch:RtbatchZmq",
    "rtbatch-servicebus": "benchmarks.systems.rtbatch:RtbatchServiceBus",
    "ray": "benchmarks.systems.ray_system:RaySystem",
    "dask": "benchmarks.systems.dask_system:DaskSystem",
    "celery": "benchmarks.systems.celery_system:CelerySystem",
}


def make_system(name: str) -> System:
    """Return a new, not yet started, system by record name."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown system {name!r}; choose from {', '.join(REGISTRY)}") from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)()
