"""``TaskContext``: the ``engine`` object a ``do_action(engine, args)`` task receives.

It lives apart from ``worker`` because the worker runs as ``__main__``
(``python -m realtime_batch.engine.worker``): a class defined there would be a
second, different class from the one ``realtime_batch.engine.worker`` names, and
task code comparing with it (``isinstance(engine, AzureBatchEngine)``,
``engine.prototype``) must see the class of the object it is given.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TaskContext"]


class TaskContext:
    """The ``engine`` object handed to ``do_action(engine, args)``.

    Attributes:
        engine_id: id of the engine running the task.
        tasks_dir: the staged tasks directory.
        work_dir: the task's working directory (input files are staged here).
        task_id: id of the running task.
        attempt: attempt number of the running task (1 on the first run).
    """

    def __init__(self, engine_id: str, tasks_dir: str, work_dir: str) -> None:
        self.engine_id = engine_id
        self.tasks_dir = tasks_dir
        self.work_dir = work_dir
        self.task_id: str | None = None
        self.attempt = 0

    def java_runner(
        self,
        jar: str | list[Any] | tuple[Any, ...],
        *args: Any,
        jvm_args: Any = (),
        timeout: Any = None,
        cold: bool = False,
        isolate: bool = False,
    ) -> str | list[str]:
        """Run ``jar`` from the tasks directory with ``args``; return its stdout text.

        The jar runs in the worker's warm JVM host unless ``cold`` (see ``java_runner``).
        The prototype's command list, ``["java", OPTIONS..., "-jar", JAR, ARGS...]``,
        is accepted too (only the engine's allowed sizing options) and returns the
        output as a list of lines.
        """
        from .jvm_host import java_runner  # here: a worker starts without the JVM host code

        return java_runner(
            jar,
            *args,
            jvm_args=jvm_args,
            timeout=timeout,
            tasks_dir=self.tasks_dir,
            cwd=self.work_dir,
            cold=cold,
            isolate=isolate,
        )

    def __repr__(self) -> str:
        return f"TaskContext(engine_id={self.engine_id!r}, task_id={self.task_id!r})"
