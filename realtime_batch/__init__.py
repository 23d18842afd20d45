"""realtime-batch: interactive, millisecond-latency tasks on Azure Batch pools.

>>> import realtime_batch as rb
>>> with rb.LocalPool(engines=2, task_files=["examples/hello/hello.py"]) as pool:
...     with rb.Session(pool) as session:
...         print(session.submit("hello.py", "world").result())

The public names are imported lazily (PEP 562) so that importing a low-level
module (the wire protocol, a transport) does not pull in the client side.
"""

from __future__ import annotations

from realtime_batch._lazy import lazy_exports

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "Session": "realtime_batch.orchestrator.session:Session",
    "JobManager": "realtime_batch.orchestrator.jobmanager:JobManager",
    "Result": "realtime_batch.orchestrator.session:Result",
    "TaskError": "realtime_batch.orchestrator.session:TaskError",
    "TaskCancelledError": "realtime_batch.orchestrator.session:TaskCancelledError",
    "DependencyError": "realtime_batch.orchestrator.session:DependencyError",
    "LocalPool": "realtime_batch.emulator.local_pool:LocalPool",
    "Pool": "realtime_batch.orchestrator.pool:Pool",
    "AzureBatchPool": "realtime_batch.orchestrator.azure_batch:AzureBatchPool",
    "open_transport": "realtime_batch.transport:open_transport",
    "Message": "realtime_batch.transport:Message",
}

__all__ = ["__version__", *sorted(_LAZY)]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
