"""Issue #15, credentials on the node: no credential in a child's argv or environment.

An engine gets a secret transport credential (a Service Bus connection string on the
stand-in, a ``zmq://`` URL with a password in direct mode) and its environment holds
other secrets (Azure variables, CURVE key files, a second ``RTBATCH_TRANSPORT``). A
task then reports what it can see: its own environment and command line, its parent's
(the engine's) command line and environment where readable, and what a JVM it starts
sees. The test also walks the engine's child processes with psutil.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from relay_engine_main import relay_argv

import realtime_batch as rb
from realtime_batch.engine import build_jar
from realtime_batch.engine.cli import engine as engine_cli
from realtime_batch.orchestrator import batch_scripts

pytestmark = pytest.mark.usefixtures("no_leaked_processes")

HAVE_JDK = bool(shutil.which("javac") and shutil.which("java") and shutil.which("jar"))

PROBE = textwrap.dedent(
    """
    import os


    def _read(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError as exc:
            return f"unreadable: {exc}"


    def run():
        ppid = os.getppid()
        return {
            "environ": dict(os.environ),
            "cmdline": _read("/proc/self/cmdline"),
            "parent_cmdline": _read(f"/proc/{ppid}/cmdline"),
            "parent_environ": _read(f"/proc/{ppid}/environ"),
            "pid": os.getpid(),
        }
    """
)

JAVA_PROBE = textwrap.dedent(
    """
    import java.nio.file.Files;
    import java.nio.file.Paths;

    public class EnvProbe {
        public static void main(String[] args) throws Exception {
            System.out.println(System.getenv());
            System.out.println(new String(Files.readAllBytes(Paths.get("/proc/self/cmdline"))));
        }
    }
    """
)


def _secret() -> str:
    return "s3cret" + uuid.uuid4().hex


def _decoy_env(secret: str, tmp: Path) -> dict[str, str]:
    """Credential-looking variables an engine's environment may hold; none may reach a task."""
    key_file = tmp / f"{secret}.key_secret"
    return {
        "AZURE_CLIENT_SECRET": secret,
        "AZURE_STORAGE_CONNECTION_STRING": f"AccountName=a;AccountKey={secret}",
        "RTBATCH_BROKER_SECRET_KEY_FILE": str(key_file),  # (the CURVE variable would be used)
        "RTBATCH_STORAGE_CONNECTION_STRING": f"AccountKey={secret}",
        "BLOB_SAS": f"sv=2024&sig={secret}",
        "RTBATCH_TRANSPORT": f"Endpoint=sb://decoy/;SharedAccessKeyName=x;SharedAccessKey={secret}",
    }


@pytest.fixture
def probe_tasks(tmp_path_factory) -> Path:
    tasks = tmp_path_factory.mktemp("probe-tasks")
    (tasks / "envprobe.py").write_text(PROBE)
    if HAVE_JDK:
        source = tasks / "EnvProbe.java"
        source.write_text(JAVA_PROBE)
        build_jar(source, tasks / "envprobe.jar")
        source.unlink()
    return tasks


def _task_files(tasks: Path) -> list[Path]:
    return sorted(tasks.iterdir())


def _assert_task_sees_no_secret(
    session: rb.Session, secrets: list[str], credential: str | None = None
) -> dict:
    """``secrets`` must not reach the task (its environment, argv, its JVM's); ``credential``,
    the one given to the engine, must not be in the engine's argv or environment either.

    (The engine's own environment is the operator's: other variables stay there, out of
    reach of a task running as another user than root, see ``deny_tracing``.)
    """
    seen = session.submit("envprobe.py").result(timeout=60)
    for secret in secrets:
        for what in ("environ", "cmdline", "parent_cmdline"):
            assert secret not in str(seen[what]), f"{what} of the task holds a credential"
    if credential is not None:
        assert credential not in seen["parent_environ"], "the engine's environ holds it"
    leaked = sorted(n for n in seen["environ"] if n.startswith(("RTBATCH_", "AZURE_")))
    # the log level, and the payload store's directory or account URL (no secret, #20)
    assert set(leaked) <= {"RTBATCH_LOG_LEVEL", "RTBATCH_PAYLOAD_STORE"}, leaked
    if HAVE_JDK:
        out = session.submit("envprobe.jar").result(timeout=120)
        assert "PATH=" in out  # the probe ran and printed the JVM's environment
        for secret in secrets:
            assert secret not in out, "the JVM's environment or command line holds a credential"
    return seen


def _assert_children_clean(root: psutil.Process, secrets: list[str]) -> int:
    """Walk ``root``'s descendants: no secret in any argv or environment. Returns the count."""
    children = root.children(recursive=True)
    for child in children:
        try:
            argv, env = " ".join(child.cmdline()), child.environ()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for secret in secrets:
            assert secret not in argv, f"argv of child {child.pid} holds a credential"
            assert secret not in str(env), f"environment of child {child.pid} holds a credential"
    return len(children)


# ---------------------------------------------------------------------------- end to end


def test_memory_relay_worker_and_jvm_get_a_scrubbed_environment(probe_tasks, tmp_path, monkeypatch):
    secret = _secret()
    for name, value in _decoy_env(secret, tmp_path).items():
        monkeypatch.setenv(name, value)  # memory:// engines run in this process
    monkeypatch.setenv("MY_TASK_SETTING", "forty-two")
    url = f"memory://sec-{uuid.uuid4().hex[:8]}"
    files = _task_files(probe_tasks)
    with rb.LocalPool(
        engines=1, transport=url, task_files=files, pass_env=["MY_TASK_SETTING"]
    ) as pool:
        with rb.Session(pool) as session:
            seen = _assert_task_sees_no_secret(session, [secret])
        assert seen["environ"]["MY_TASK_SETTING"] == "forty-two"
        worker = psutil.Process(seen["pid"])
        assert worker.ppid() == os.getpid()
        assert _assert_children_clean(psutil.Process(os.getpid()), [secret]) >= 1


def test_zmq_direct_engine_gets_its_password_url_outside_argv(probe_tasks, tmp_path):
    secret, password = _secret(), _secret()
    with rb.LocalPool(engines=0) as broker_pool:  # only the broker
        plain = broker_pool.transport_url
        url = plain.replace("zmq://", f"zmq://rtb:{password}@")
        with rb.LocalPool(
            engines=1,
            transport=url,
            start_broker=False,
            task_files=_task_files(probe_tasks),
            env={**_decoy_env(secret, tmp_path), "MY_TASK_SETTING": "seven"},
            pass_env=["MY_TASK_SETTING"],
        ) as pool:
            with rb.Session(plain, pool.job) as session:
                seen = _assert_task_sees_no_secret(session, [secret, password], password)
            assert seen["environ"]["MY_TASK_SETTING"] == "seven"
            [pid] = pool.engine_pids()
            engine = psutil.Process(pid)
            assert password not in " ".join(engine.cmdline())
            assert password not in str(engine.environ())
            assert _assert_children_clean(engine, [secret, password]) >= 1


def test_servicebus_connection_string_never_in_an_engine_argv(probe_tasks, tmp_path):
    pytest.importorskip("azure.servicebus")
    pytest.importorskip("proton")
    from servicebus_standin import StandInProcess

    standin = StandInProcess()
    try:
        conn = standin.connection_string
        key = conn.split("SharedAccessKey=", 1)[1].split(";", 1)[0]
        secret = _secret()
        with rb.LocalPool(
            engines=1,
            transport=conn,
            queue=f"sec-{uuid.uuid4().hex[:8]}",
            task_files=_task_files(probe_tasks),
            env=_decoy_env(secret, tmp_path),
        ) as pool:
            with rb.Session(pool, task_queue=pool.queue) as session:
                _assert_task_sees_no_secret(session, [key, secret], key)
            [pid] = pool.engine_pids()
            engine = psutil.Process(pid)
            assert key not in " ".join(engine.cmdline())
            assert key not in str(engine.environ())
            assert _assert_children_clean(engine, [key, secret]) >= 1
    finally:
        standin.stop()


@pytest.fixture
def broker_url() -> Iterator[str]:
    with rb.LocalPool(engines=0) as broker_pool:
        yield broker_pool.transport_url


def _start_engine(
    args: list[str], env: dict[str, str], tasks: Path, cwd: Path, mode: str = "direct"
) -> subprocess.Popen:
    argv = [sys.executable, "-m", "realtime_batch.engine", "--queue", "tasks"]
    argv += ["--tasks-dir", str(tasks), "--work-dir", str(cwd), *args]
    if mode == "relay":  # the same engine, its zmq:// transport not settling by token
        argv = relay_argv(argv)
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ENGINE READY"):
        proc.kill()
        proc.wait()
        pytest.fail(f"engine did not start: {line!r}")
    return proc


def _stop_engine(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.mark.parametrize("mode", ["relay", "direct"])
def test_engine_removes_rtbatch_transport_from_its_environment(
    broker_url, probe_tasks, tmp_path, mode
):
    password = _secret()
    env = {**os.environ, "RTBATCH_TRANSPORT": broker_url.replace("zmq://", f"zmq://u:{password}@")}
    proc = _start_engine([], env, probe_tasks, tmp_path, mode)
    try:
        with rb.Session(broker_url, name="probe") as session:
            seen = _assert_task_sees_no_secret(session, [password], password)
        assert seen["environ"].get("RTBATCH_TRANSPORT") is None
        engine = psutil.Process(proc.pid)
        assert password not in str(engine.environ())  # wiped from /proc/PID/environ
        assert _assert_children_clean(engine, [password]) >= 1
    finally:
        _stop_engine(proc)


def test_engine_reads_a_private_transport_file_and_passes_named_variables(
    broker_url, probe_tasks, tmp_path
):
    password = _secret()
    secret_file = tmp_path / "transport"
    secret_file.write_text(broker_url.replace("zmq://", f"zmq://u:{password}@") + "\n")
    secret_file.chmod(0o600)
    env = {**os.environ, "MY_TASK_SETTING": "forty-two"}
    args = ["--transport-file", str(secret_file), "--pass-env", "MY_TASK_SETTING"]
    proc = _start_engine(args, env, probe_tasks, tmp_path)
    try:
        with rb.Session(broker_url, name="probe") as session:
            seen = _assert_task_sees_no_secret(session, [password], password)
        assert seen["environ"]["MY_TASK_SETTING"] == "forty-two"
        assert str(secret_file) in " ".join(psutil.Process(proc.pid).cmdline())
    finally:
        _stop_engine(proc)


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "url",
    [
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=engine;SharedAccessKey=abc=",
        "Endpoint=sb://ns/;SharedAccessSignature=SharedAccessSignature sr=x&sig=abc&se=1",
        "zmq://user:pa55@127.0.0.1:5555",
    ],
)
def test_a_secret_transport_in_argv_is_refused(tmp_path, url):
    result = CliRunner().invoke(
        engine_cli, ["--transport", url, "--queue", "q", "--tasks-dir", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    assert "--transport-file" in result.output and "RTBATCH_TRANSPORT" in result.output
    assert "abc" not in result.output and "pa55" not in result.output


def test_a_group_readable_transport_file_is_refused(tmp_path):
    path = tmp_path / "transport"
    path.write_text("zmq://u:pw@127.0.0.1:5555")
    path.chmod(0o640)
    result = CliRunner().invoke(
        engine_cli, ["--transport-file", str(path), "--queue", "q", "--tasks-dir", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "0640" in result.output and "chmod 600" in result.output
    assert "pw@" not in result.output


def test_transport_and_transport_file_together_are_refused(tmp_path):
    path = tmp_path / "transport"
    path.write_text("zmq://127.0.0.1:5555")
    path.chmod(0o600)
    args = ["--transport", "zmq://127.0.0.1:5555", "--transport-file", str(path)]
    result = CliRunner().invoke(engine_cli, [*args, "--queue", "q", "--tasks-dir", str(tmp_path)])
    assert result.exit_code == 2 and "not both" in result.output


def test_no_transport_at_all_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("RTBATCH_TRANSPORT", raising=False)
    result = CliRunner().invoke(engine_cli, ["--queue", "q", "--tasks-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--transport-file" in result.output


def test_read_credential_file_rules(tmp_path):
    from realtime_batch.engine.credentials import CredentialError, read_credential_file

    path = tmp_path / "cred"
    with pytest.raises(CredentialError, match="cannot read"):
        read_credential_file(path)
    path.write_text("  \n")
    path.chmod(0o600)
    with pytest.raises(CredentialError, match="empty"):
        read_credential_file(path)
    path.write_text("Endpoint=sb://x/;SharedAccessKey=k\n")
    assert read_credential_file(path) == "Endpoint=sb://x/;SharedAccessKey=k"
    path.chmod(0o604)
    with pytest.raises(CredentialError, match="0604"):
        read_credential_file(path)


@pytest.mark.parametrize(
    "name",
    ["RTBATCH_TRANSPORT", "RTBATCH_CURVE_SECRET_KEY_FILE", "AZURE_CLIENT_SECRET", "MY_API_KEY",
     "DB_PASSWORD", "GITHUB_TOKEN", "BLOB_SAS", "not a name"],
)  # fmt: skip
def test_pass_env_refuses_credential_names(name):
    from realtime_batch.engine.credentials import CredentialError, check_pass_env

    with pytest.raises(CredentialError, match="--pass-env"):
        check_pass_env([name])


def test_local_pool_refuses_a_credential_name_in_pass_env(tmp_path):
    from realtime_batch.engine.credentials import CredentialError

    with pytest.raises(CredentialError, match="AZURE_CLIENT_SECRET"):
        rb.LocalPool(
            engines=1, transport="memory://x", root=tmp_path, pass_env=["AZURE_CLIENT_SECRET"]
        )
    assert not any(tmp_path.iterdir())  # refused before anything was made


def test_pass_env_option_refusal_is_a_usage_error(tmp_path):
    args = ["--transport", "zmq://127.0.0.1:5555", "--pass-env", "AZURE_CLIENT_SECRET"]
    result = CliRunner().invoke(engine_cli, [*args, "--queue", "q", "--tasks-dir", str(tmp_path)])
    assert result.exit_code == 2 and "AZURE_CLIENT_SECRET" in result.output


def test_task_environment_is_an_allowlist(tmp_path):
    from realtime_batch.engine.credentials import task_environment

    source = {
        **_decoy_env("xyz", tmp_path),
        "PATH": "/usr/bin",
        "HOME": "/home/e",
        "LC_ALL": "C.UTF-8",
        "JAVA_HOME": "/opt/jdk",
        "EXTRA": "1",
        "RTBATCH_LOG_LEVEL": "DEBUG",
    }
    env = task_environment(source)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/e",
        "LC_ALL": "C.UTF-8",
        "JAVA_HOME": "/opt/jdk",
        "RTBATCH_LOG_LEVEL": "DEBUG",
    }
    assert task_environment(source, ["EXTRA", "MISSING"])["EXTRA"] == "1"


# ---------------------------------------------------------------------------- Azure script


def test_azure_engine_command_reads_private_staged_files(tmp_path):
    """Run the generated engine script with a stand-in python recording what it got: the
    credentials are files Batch downloaded into the task directory, made private, passed
    by path; none is in the job, the command line or the environment (issue #16)."""
    secret = "Endpoint=sb://ns/;SharedAccessSignature=SharedAccessSignature sr=x&sig=y"
    shared = tmp_path / "shared"
    job = shared / "rtbatch" / "jobs" / "job-1"
    (job / "inputs").mkdir(parents=True)
    (job / "tasks").mkdir()
    work = tmp_path / "work"
    creds = work / "engine-credentials"
    creds.mkdir(parents=True)
    (creds / "transport").write_text(secret)
    (creds / "transport").chmod(0o644)  # as a download leaves it
    (creds / "engine.key_secret").write_text("k")
    (creds / "engine.key_secret").chmod(0o644)
    python = shared / "rtbatch" / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    out = tmp_path / "out"
    python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {out}.argv\nenv > {out}.env\n')
    python.chmod(0o755)
    script = batch_scripts.engine_command(queue="tasks", prefetch=4, curve=True)
    env = {
        "PATH": os.environ["PATH"],
        "AZ_BATCH_NODE_SHARED_DIR": str(shared),
        "AZ_BATCH_JOB_ID": "job-1",
        "AZ_BATCH_TASK_WORKING_DIR": str(work),
        "AZ_BATCH_NODE_ID": "node",
        "AZ_BATCH_TASK_ID": "engine-0",
    }
    subprocess.run(shlex.split(script), env=env, check=True)
    argv = Path(f"{out}.argv").read_text().splitlines()
    assert argv[argv.index("--transport-file") + 1] == str(creds / "transport")
    assert argv[argv.index("--curve-secret-key-file") + 1] == str(creds / "engine.key_secret")
    assert argv[argv.index("--curve-server-key") + 1] == str(creds / "broker.key")
    assert secret not in "\n".join(argv) and secret not in Path(f"{out}.env").read_text()
    for name in ("transport", "engine.key_secret"):
        assert stat.S_IMODE((creds / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700


def test_deny_tracing_makes_the_process_non_dumpable():
    code = (
        "import ctypes\n"
        "from realtime_batch.engine.credentials import deny_tracing\n"
        "libc = ctypes.CDLL(None)\n"
        "before = libc.prctl(3, 0, 0, 0, 0)\n"  # PR_GET_DUMPABLE
        "deny_tracing()\n"
        "print(before, libc.prctl(3, 0, 0, 0, 0))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "0"]


def test_redact_hides_a_url_password():
    from realtime_batch.config import contains_secret, redact

    assert redact("transport.url", "zmq://u:pw@127.0.0.1:5555") == "zmq://u:***@127.0.0.1:5555"
    assert not contains_secret("zmq://127.0.0.1:5555") and not contains_secret("memory://x")
