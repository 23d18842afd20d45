"""What an engine and its task worker import when they start (issue #21: start-up CPU).

Every engine of a pool, and every worker restart (after a crash, a timeout or the
cancel of a running task), pays its imports again. These tests run a fresh
interpreter, import what the process imports, and read ``sys.modules``: a module
that only some other path needs (the ZeroMQ broker, the statistics records, the
Azure SDKs, rich, the Prometheus client, the TOML writer, tenacity) must not be
among them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Never needed to start an engine or a worker: imported by other commands, or
#: on demand (``--metrics-port``, a Service Bus URL, ``rtbatch config set``).
NOT_AT_START = (
    "realtime_batch.transport.zeromq.broker",
    "realtime_batch.transport.zeromq.cli",
    "realtime_batch.transport.zeromq.fairshare",
    "realtime_batch.transport.zeromq.parking",
    "realtime_batch.transport.store",
    "realtime_batch.transport.stats",
    "realtime_batch.orchestrator",
    "realtime_batch.emulator",
    "azure",
    "rich",
    "prometheus_client",
    "tomli_w",
    "tenacity",
)

#: The engine process: its command (which reads its transport with ``config``), its
#: engine, the ZeroMQ client it connects with.
ENGINE = (
    "realtime_batch.engine.cli",
    "realtime_batch.config",
    "realtime_batch.engine.engine",
    "realtime_batch.transport.zeromq.client",
)
#: The worker process in either mode (``_direct_runner`` and the client: direct mode).
WORKER = (
    "realtime_batch.engine.worker",
    "realtime_batch.engine._direct_runner",
    "realtime_batch.transport.zeromq.client",
)


def _loaded(*modules: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after importing ``modules``."""
    code = (
        "import json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    __import__(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def _unwanted(loaded: set[str], names: tuple[str, ...] = NOT_AT_START) -> list[str]:
    return sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in names))


def test_the_checker_sees_a_loaded_module():
    loaded = _loaded("realtime_batch.transport.zeromq.cli")
    assert "realtime_batch.transport.zeromq.broker" in loaded
    assert _unwanted(loaded) == [
        "realtime_batch.transport.stats",
        "realtime_batch.transport.store",
        "realtime_batch.transport.zeromq.broker",
        "realtime_batch.transport.zeromq.cli",
        "realtime_batch.transport.zeromq.fairshare",
        "realtime_batch.transport.zeromq.parking",
    ]


def test_the_engine_command_does_not_load_the_broker():
    assert _unwanted(_loaded("realtime_batch.engine.cli")) == []


#: Jars run in the worker: the engine only checks the options of its warm JVM host;
#: and only the worker parses arguments with argparse.
WORKER_ONLY = ("realtime_batch.engine.jvm_host", "realtime_batch.engine.java", "argparse")


#: an engine on zmq:// feeds its worker directly: the relay modules stay unloaded
RELAY_ONLY = ("realtime_batch.engine._relay", "realtime_batch.engine._pipeline")


def test_a_running_engine_loads_nothing_it_does_not_use():
    loaded = _loaded(*ENGINE)
    assert "realtime_batch.engine.engine" in loaded
    assert _unwanted(loaded, NOT_AT_START + WORKER_ONLY + RELAY_ONLY) == []


@pytest.mark.parametrize("extra", [(), ("click",)], ids=["not-at-start", "no-click"])
def test_the_worker_loads_nothing_it_does_not_use(extra):
    loaded = _loaded(*WORKER)
    assert "realtime_batch.engine.worker" in loaded
    assert _unwanted(loaded, NOT_AT_START + extra) == []


def test_the_curve_options_are_one_function_for_every_command():
    code = (
        "from realtime_batch.transport.zeromq import cli, cli_options\n"
        "import realtime_batch.dlq_cli, realtime_batch.engine.cli\n"
        "print(cli.curve_key_options is cli_options.curve_key_options)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_an_engine_without_curve_keys_does_not_import_zmq():
    """A Service Bus engine (no ``zmq://`` client) never needs zmq; CURVE options alone
    do not pull it in."""
    loaded = _loaded(
        "realtime_batch.engine.cli", "realtime_batch.config", "realtime_batch.engine.engine"
    )
    assert _unwanted(loaded, ("zmq", "realtime_batch.transport.zeromq.curve")) == []


def test_the_curve_options_give_the_transport_options(tmp_path):
    import click
    from click.testing import CliRunner

    from realtime_batch.transport.zeromq.cli_options import curve_key_options

    @click.command()
    @curve_key_options("engine")
    def show(curve_options):
        click.echo(json.dumps(curve_options, sort_keys=True))

    secret = tmp_path / "engine.key_secret"
    secret.write_text("not read here")
    runner = CliRunner(
        env={"RTBATCH_CURVE_SERVER_KEY": None, "RTBATCH_CURVE_SECRET_KEY_FILE": None}
    )
    assert runner.invoke(show, []).output.strip() == "{}"
    both = runner.invoke(
        show, ["--curve-server-key", "K" * 40, "--curve-secret-key-file", str(secret)]
    )
    assert json.loads(both.output) == {
        "curve_secret_key": str(secret),
        "curve_server_key": "K" * 40,
    }
    one = runner.invoke(show, ["--curve-secret-key-file", str(secret)])
    assert one.exit_code == 2 and "go together" in one.output
