"""The task worker process: ``python -m realtime_batch.engine.worker``.

This module is the worker's side only (the engine's handle on it is
``_process.WorkerProcess``). A worker runs task code for one engine, in one of two
ways:

* relay mode (``_serve``): tasks come from the engine on a pipe and answers go back
  on another (``_pipe`` says what travels on them);
* direct mode (``_serve_direct``): the worker takes tasks from the broker itself and
  answers them (``_direct_runner``), the engine supervising it through a shared
  ledger (``_ledger``).

It runs in its own session, dies with its parent (``_children``), sends its tasks'
``print`` output to stderr (the engine's log; at most ``max_output`` characters per
task, the rest dropped with a ``[... N bytes dropped]`` line), and writes a Python
stack dump to the crash pipe on fatal signals (``faulthandler``).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import pickle
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from ..protocol import encode_json
from ._children import die_with_parent
from ._output import DEFAULT_MAX_OUTPUT, OutputBudget, WorkerLog, bound_print_output, release_memory
from ._pipe import (
    CRASH_TAIL,
    STATUS_CANCELLED,
    STATUS_EXPIRED,
    STATUS_SKIPPED,
    ControlPipe,
    encode_answer,
)
from .context import TaskContext
from .credentials import scrub_environ
from .java import set_current_dirs, set_jvm_policy, set_max_output
from .jvm_host import JvmHostDiedError, configure_shared_host, run_jar_warm
from .prototype import install_finder
from .tasks import KIND_JAR, JvmOptionPolicy, TaskModuleCache, call_task

__all__ = ["main"]

logger = logging.getLogger(__name__)

#: the pipe the engine reads a dead worker's last words from (set in ``main``)
_crash_fd: int | None = None


#: The print budget of the running task (set in ``main``).
_output: OutputBudget | None = None


def _run_one(item: tuple[Any, ...], cache: Any, context: TaskContext) -> tuple[Any, ...]:
    seq, kind, path, args, kwargs, deadline, task_id, attempt = item
    started = time.time()
    if deadline is not None and started > deadline:
        return (seq, STATUS_EXPIRED, None, None, started, started)
    context.task_id, context.attempt = task_id, attempt
    try:
        if kind == KIND_JAR:  # kwargs checked on admission (``check_jar_kwargs``)
            value = _run_jar_command(path, args, kwargs, context.work_dir)
        else:
            value = call_task(cache.load(path), context, args, kwargs)
        return (seq, "ok", value, None, started, time.time())
    except JvmHostDiedError as exc:
        _die_like_the_jvm(exc)
        raise  # not reached
    except BaseException as exc:  # the task's failure is its result
        return (seq, "error", None, _describe(exc), started, time.time())
    finally:
        if _output is not None:
            _output.end_task()
        if kind == KIND_JAR:
            release_memory.due = True


def _run_jar_command(path: str, args: Any, kwargs: dict[str, Any], work_dir: str) -> str:
    """A jar submitted as the command: in the warm JVM host unless ``cold=True``.

    ``kwargs`` were checked on admission (``tasks.check_jar_kwargs``).
    """
    return run_jar_warm(
        path, args, jvm_args=kwargs.get("jvm_args", ()), cwd=work_dir,
        isolate=kwargs.get("isolate", False), cold=kwargs.get("cold", False),
    )  # fmt: skip


def _die_like_the_jvm(exc: JvmHostDiedError) -> None:
    """End this worker with the status of its JVM host, which died during the task.

    The engine then handles it as a worker crash (retried while the task allows,
    else ``WorkerCrashedError`` naming that status), with ``exc``'s text as the crash report.
    """
    if _crash_fd is not None:
        with contextlib.suppress(OSError):
            os.write(_crash_fd, "".join(traceback.format_exception(exc)).encode()[-CRASH_TAIL:])
    faulthandler.disable()  # the Python stack of this exit says nothing
    code = exc.returncode
    if code is not None and code < 0:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
            time.sleep(5)  # a signal that does not kill (SIGCHLD...) falls through
    os._exit(code if code is not None and 0 < code < 256 else 1)


def _describe(exc: BaseException) -> tuple[str, str, str]:
    """``(type name, message, traceback)``, even for exceptions whose ``__str__`` fails."""
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__} whose str() failed>"
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        text = ""
    return type(exc).__name__, message, text


def _serve(tasks: Connection, results: Connection, ctrl_fd: int, context: TaskContext) -> None:
    cache = TaskModuleCache()
    control = ControlPipe(ctrl_fd)
    results.send_bytes(encode_json(["ready", os.getpid()], "ready"))
    while True:
        try:
            batch = pickle.loads(tasks.recv_bytes())
        except EOFError:
            return
        if batch is None:
            return
        for item in batch:
            control.poll()
            if control.draining or item[0] in control.seqs:
                now = time.time()
                status = STATUS_CANCELLED if item[0] in control.seqs else STATUS_SKIPPED
                control.seqs.discard(item[0])
                out = (item[0], status, None, None, now, now)
            else:
                out = _run_one(item, cache, context)
            results.send_bytes(encode_answer(out))
            del out
            release_memory()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the worker process (started by ``_process.WorkerProcess.start``)."""
    parser = argparse.ArgumentParser(prog="realtime_batch.engine.worker")
    parser.add_argument("--fds", required=True)
    parser.add_argument("--tasks-dir", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--engine-id", required=True)
    parser.add_argument("--max-output", type=int, default=DEFAULT_MAX_OUTPUT)
    WorkerLog.add_arguments(parser)
    parser.add_argument(
        "--direct", action="store_true", help="direct mode (options come on the task pipe)"
    )
    parser.add_argument("--shared-fds", default=None, help="direct mode: ledger fd, wake fd")
    parser.add_argument("--pass-env", default="", help="variables kept besides the allowlist")
    parser.add_argument("--jvm-host-option", action="append", default=[])
    parser.add_argument("--jvm-policy", default=None, help="JvmOptionPolicy options (JSON)")
    opts = parser.parse_args(argv)
    scrub_environ([name for name in opts.pass_env.split(",") if name])
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine decides when to stop
    os.dup2(2, 1)  # task print() output goes to the engine's log, not its stdout
    task_fd, result_fd, ctrl_fd, crash_fd = (int(x) for x in opts.fds.split(","))
    os.set_blocking(ctrl_fd, False)
    os.set_blocking(crash_fd, False)  # a dying worker must never block on a full pipe
    faulthandler.enable(file=crash_fd, all_threads=True)
    global _crash_fd
    _crash_fd = crash_fd
    level = logging.getLevelName(os.environ.get("RTBATCH_LOG_LEVEL", "WARNING").upper())
    log = WorkerLog.from_arguments(opts)
    logging.basicConfig(
        level=level if isinstance(level, int) else logging.WARNING,
        format="%(asctime)s %(levelname)s worker %(name)s: %(message)s",
        handlers=None if log is None else [log.handler()],
    )
    set_max_output(opts.max_output)
    if opts.jvm_policy is not None:
        set_jvm_policy(JvmOptionPolicy(**json.loads(opts.jvm_policy)))
    global _output  # after basicConfig: the worker's own log is not counted
    _output = bound_print_output(opts.max_output, logging.getLogger().handlers[0])
    tasks_dir, work_dir = os.path.realpath(opts.tasks_dir), os.path.realpath(opts.work_dir)
    sys.path.insert(0, tasks_dir)  # task modules may import their staged neighbours
    set_current_dirs(tasks_dir, work_dir)
    configure_shared_host(
        opts.jvm_host_option, output_limit=opts.max_output
    )  # the host itself starts at the first jar
    context = TaskContext(opts.engine_id, tasks_dir, work_dir)
    install_finder()  # prototype task modules import ``engine.azbatchengine``
    tasks = Connection(task_fd, writable=False)
    results = Connection(result_fd, readable=False)
    try:
        if opts.direct:
            options = json.loads(tasks.recv_bytes())
            _serve_direct(options, opts.shared_fds, results, ctrl_fd, context)
        else:
            _serve(tasks, results, ctrl_fd, context)
    except (BrokenPipeError, EOFError):
        pass  # the engine went away


def _serve_direct(
    options: dict[str, Any], shared_fds: str, results: Connection, ctrl_fd: int,
    context: TaskContext,
) -> None:  # fmt: skip
    """Direct mode: take tasks from the broker, run them, answer them (see ``_direct``)."""
    from ..transport import open_transport
    from ._direct_runner import DirectControl, DirectRunner
    from ._ledger import Ledger

    ledger_fd, wake_fd = (int(x) for x in shared_fds.split(","))
    os.set_blocking(wake_fd, False)
    transport = open_transport(options.pop("url"), **options.get("transport_options", {}))
    try:
        ledger = Ledger(options["slots"], options["body_size"], fd=ledger_fd)
        control = DirectControl(ctrl_fd)
        runner = DirectRunner(transport, ledger, control, context, options, wake_fd)
        results.send_bytes(encode_json(["ready", os.getpid()], "ready"))
        control.wait_go(60.0)
        runner.serve(TaskModuleCache(), _run_one, release_memory)
    finally:
        transport.close()


if __name__ == "__main__":
    main()
