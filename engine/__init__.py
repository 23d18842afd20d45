"""The node engine: pulls tasks from a queue and runs them in a supervised worker process.

``python -m realtime_batch.engine`` (or ``rtbatch engine``) starts one; in-process,
``Engine(transport, queue, tasks_dir).start()`` runs one in a thread. Task code
can run staged jars with ``java_runner``. Names are imported lazily (PEP 562) so
that the worker process stays small.
"""

from __future__ import annotations

from realtime_batch._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "Engine": "realtime_batch.engine.engine:Engine",
    "EngineError": "realtime_batch.engine.engine:EngineError",
    "default_engine_id": "realtime_batch.engine.engine:default_engine_id",
    "TaskContext": "realtime_batch.engine.context:TaskContext",
    "java_runner": "realtime_batch.engine.jvm_host:java_runner",
    "build_jar": "realtime_batch.engine.java:build_jar",
    "JavaTaskError": "realtime_batch.engine.java:JavaTaskError",
    "JavaNotFoundError": "realtime_batch.engine.java:JavaNotFoundError",
    "JavaTimeoutError": "realtime_batch.engine.java:JavaTimeoutError",
    "JvmHostDiedError": "realtime_batch.engine.jvm_host:JvmHostDiedError",
    "CommandError": "realtime_batch.engine.tasks:CommandError",
    "CommandNotFoundError": "realtime_batch.engine.tasks:CommandNotFoundError",
    "InvalidCommandError": "realtime_batch.engine.tasks:InvalidCommandError",
    "resolve_command": "realtime_batch.engine.tasks:resolve_command",
    "JvmOptionPolicy": "realtime_batch.engine.tasks:JvmOptionPolicy",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
