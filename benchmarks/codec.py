"""Wire encodings side by side: orjson + hand validation against msgspec (MessagePack, typed).

``python -m benchmarks.codec`` prints, for a task record and a result record whose value is
100 B, 100 KiB or 1 MiB, as text (a ``str``) or as ``bytes``, the time to encode and decode
the record and the body's size under each encoding:

* ``orjson``: today's protocol v1 (``realtime_batch.protocol`` as it was: JSON, fields
  checked by hand after ``orjson.loads``); ``bytes`` must travel as base64 text in a tagged
  object (``{"__bytes__": "..."}``), since JSON has no binary type.
* ``msgspec``: MessagePack with ``msgspec.Struct`` records decoded by a typed decoder (the
  field checks happen while decoding); ``bytes`` travel as MessagePack ``bin``.
* ``protocol``: ``realtime_batch.protocol``'s own ``encode_task``/``decode_task`` and
  ``encode_result``/``decode_result`` on its records (values tagged, every check made):
  what each message costs today. Run with another checkout's interpreter for an A/B.

The figures chose protocol v2's encoding (``docs/payloads.md``).
"""

from __future__ import annotations

import base64
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

__all__ = ["main", "measure"]

SIZES = {"100B": 100, "100KiB": 100 * 1024, "1MiB": 1024 * 1024}


# -- orjson + hand validation (protocol v1's way) -----------------------------------------


def _orjson_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _orjson_restore(value: Any) -> Any:
    if type(value) is dict and len(value) == 1 and "__bytes__" in value:
        return base64.b64decode(value["__bytes__"])
    return value


def _orjson_task_encode(task: dict[str, Any]) -> bytes:
    return orjson.dumps(task, default=_orjson_default)


def _orjson_task_decode(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)
    for name in ("session", "job", "task", "command"):
        if type(data.get(name)) is not str:
            raise ValueError(name)
    if type(data.get("args")) is not list or type(data.get("kwargs")) is not dict:
        raise ValueError("args")
    if type(data.get("attempt")) is not int:
        raise ValueError("attempt")
    data["args"] = [_orjson_restore(a) for a in data["args"]]
    return data


def _orjson_result_encode(result: dict[str, Any]) -> bytes:
    return orjson.dumps(result, default=_orjson_default)


def _orjson_result_decode(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)
    for name in ("session", "job", "task", "status"):
        if type(data.get(name)) is not str:
            raise ValueError(name)
    data["value"] = _orjson_restore(data.get("value"))
    return data


# -- msgspec MessagePack with typed structs ---------------------------------------------


class _Reply(msgspec.Struct, array_like=True):
    queue: str
    group: str | None = None


class _Task(msgspec.Struct, kw_only=True):
    session: str
    job: str
    task: str
    command: str
    reply_to: _Reply
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    attempt: int = 1
    max_retries: int = 3
    timeout: float | None = None
    deadline: float | None = None
    retry_on: list[str] = []
    submitted_at: float = 0.0
    session_key: str = ""
    v: int = 2


class _Result(msgspec.Struct, kw_only=True):
    session: str
    job: str
    task: str
    status: str
    value: Any = None
    engine: str = ""
    attempt: int = 1
    started_at: float | None = None
    finished_at: float | None = None
    session_key: str = ""
    v: int = 2


_ENCODER = msgspec.msgpack.Encoder()
_TASK_DECODER = msgspec.msgpack.Decoder(_Task)
_RESULT_DECODER = msgspec.msgpack.Decoder(_Result)


def _ids() -> dict[str, Any]:
    return {"session": "s-1234", "job": "job-1", "task": "t-000042"}


def _records(value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    task = {
        **_ids(),
        "command": "echo",
        "reply_to": {"queue": "results", "group": "s-1234"},
        "args": [value],
        "kwargs": {},
        "attempt": 1,
        "max_retries": 3,
        "timeout": None,
        "deadline": None,
        "retry_on": [],
        "submitted_at": time.time(),
        "session_key": "k" * 32,
        "v": 1,
    }
    result = {
        **_ids(),
        "status": "ok",
        "ok": True,
        "value": value,
        "error": None,
        "engine": "node-0/e-1",
        "attempt": 1,
        "started_at": time.time(),
        "finished_at": time.time(),
        "session_key": "k" * 32,
        "v": 1,
    }
    return task, result


def _time(fn: Callable[[], Any], budget: float = 0.2) -> float:
    """Median seconds per call of ``fn`` over a few rounds that take about ``budget`` each."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    loops = max(1, min(10_000, int(budget / once / 5)))
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        rounds.append((time.perf_counter() - start) / loops)
    return statistics.median(rounds)


def measure(size: int, binary: bool) -> dict[str, dict[str, float]]:
    """Seconds to encode+decode a task and a result carrying one value of ``size`` bytes.

    Returns ``{"orjson": {...}, "msgspec": {...}}`` with ``task``, ``result`` (seconds for
    encode then decode) and ``bytes`` (the task body's size).
    """
    value: Any = bytes(range(256)) * (size // 256) + bytes(size % 256) if binary else "x" * size
    task, result = _records(value)
    task_struct = _Task(
        **{**task, "reply_to": _Reply(**task["reply_to"]), "v": 2}  # type: ignore[arg-type]
    )
    result_struct = _Result(
        **{k: v for k, v in result.items() if k not in ("ok", "error")} | {"v": 2}
    )
    out: dict[str, dict[str, float]] = {}
    body = _orjson_task_encode(task)
    out["orjson"] = {
        "task": _time(lambda: _orjson_task_decode(_orjson_task_encode(task))),
        "result": _time(lambda: _orjson_result_decode(_orjson_result_encode(result))),
        "bytes": float(len(body)),
    }
    assert _orjson_task_decode(body)["args"][0] == value
    body = _ENCODER.encode(task_struct)
    out["msgspec"] = {
        "task": _time(lambda: _TASK_DECODER.decode(_ENCODER.encode(task_struct))),
        "result": _time(lambda: _RESULT_DECODER.decode(_ENCODER.encode(result_struct))),
        "bytes": float(len(body)),
    }
    assert _TASK_DECODER.decode(body).args[0] == value
    out["protocol"] = _protocol(value)
    return out


def _protocol(value: Any) -> dict[str, float]:
    """The same round trips through ``realtime_batch.protocol`` itself."""
    from realtime_batch import protocol

    task = protocol.TaskRecord(
        session="s-1234",
        job="job-1",
        task="t-000042",
        command="echo",
        reply_to=protocol.ReplyTo("results", "s-1234"),
        args=[value],
        session_key="k" * 32,
    )
    result = protocol.ResultRecord(
        session="s-1234",
        job="job-1",
        task="t-000042",
        status="ok",
        value=value,
        engine="node-0/e-1",
        started_at=time.time(),
        finished_at=time.time(),
        session_key="k" * 32,
    )
    body = protocol.encode_task(task)
    assert protocol.decode_task(body).args[0] == value
    return {
        "task": _time(lambda: protocol.decode_task(protocol.encode_task(task))),
        "result": _time(lambda: protocol.decode_result(protocol.encode_result(result))),
        "bytes": float(len(body)),
    }


def main() -> int:
    """Print the table (``python -m benchmarks.codec``)."""
    head = f"{'record':<7} {'value':<14} {'orjson µs':>11} {'msgspec µs':>11} {'ratio':>6}"
    lines = [head + f" {'orjson body':>12} {'msgspec body':>13} {'protocol µs':>12}", "-" * 93]
    for name, size in SIZES.items():
        for binary in (False, True):
            figures = measure(size, binary)
            kind = f"{name} {'bytes' if binary else 'str'}"
            for record in ("task", "result"):
                o, m = figures["orjson"][record] * 1e6, figures["msgspec"][record] * 1e6
                lines.append(
                    f"{record:<7} {kind:<14} {o:>11.1f} {m:>11.1f} {o / m:>6.1f}"
                    f" {int(figures['orjson']['bytes']):>12} {int(figures['msgspec']['bytes']):>13}"
                    f" {figures['protocol'][record] * 1e6:>12.1f}"
                )
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.write(
        f"encode+decode per record (median of 5 rounds); msgspec {msgspec.__version__}, "
        f"orjson {orjson.__version__}; ratio = orjson / msgspec; protocol = "
        "realtime_batch.protocol's own encode_* + decode_* (tagging and checks included)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
