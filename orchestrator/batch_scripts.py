"""The shell scripts an Azure Batch node runs for realtime-batch.

Kept apart from the pool logic so they can be read (and reviewed) as scripts. Each
is passed as ``/bin/bash -c '<script>'``: Batch does not run command lines in a
shell, and a self-contained command line shows up whole in the portal.

Layout on a node (``$AZ_BATCH_NODE_SHARED_DIR/rtbatch``)::

    venv/                 the realtime-batch wheel and its engine dependencies
    jobs/<job id>/tasks/  task modules and jars of the job (copied by the job preparation)
    jobs/<job id>/inputs/ input files, copied into each engine's working directory

Each engine task downloads the staged ``engine-credentials/`` folder into its own
working directory (``$AZ_BATCH_TASK_WORKING_DIR/engine-credentials``): the transport
URL or token (``transport``) and, with CURVE, ``broker.key`` and ``engine.key_secret``.
"""

from __future__ import annotations

import shlex

from realtime_batch.payloads import ENV_STORE, SAS_FILE

__all__ = [
    "CREDENTIALS_FOLDER",
    "NODE_ROOT",
    "PAYLOAD_CREDENTIAL",
    "engine_command",
    "job_prep_command",
    "start_task_command",
]

NODE_ROOT = "$AZ_BATCH_NODE_SHARED_DIR/rtbatch"
#: staging folder (and folder in an engine task's working directory) of engine credentials
CREDENTIALS_FOLDER = "engine-credentials"
#: the engine credential file holding the job's payload container URL with a SAS (#20)
PAYLOAD_CREDENTIAL = "payload-store"
JRE_PACKAGE = "openjdk-21-jre-headless"
# apt waits for the dpkg lock (unattended-upgrades runs at first boot) instead of failing.
_APT = "apt-get -o DPkg::Lock::Timeout=900 -q"


def _bash(lines: list[str]) -> str:
    return "/bin/bash -c " + shlex.quote("\n".join(["set -euo pipefail", *lines]))


def _install_jre(only_if_missing: bool) -> list[str]:
    install = [
        "export DEBIAN_FRONTEND=noninteractive",
        f"{_APT} update",
        f"{_APT} install -y --no-install-recommends {JRE_PACKAGE}",
    ]
    if not only_if_missing:
        return install
    return ["if ! command -v java >/dev/null 2>&1; then", *("  " + s for s in install), "fi"]


def start_task_command(wheel_name: str, *, java: bool, extras: str = "azure") -> str:
    """Start task: a venv with the realtime-batch wheel (+ a JRE when jars are staged).

    Runs as the pool's admin auto-user at every node boot, with ``waitForSuccess``:
    Batch schedules no engine on a node before it exits 0. Batch downloaded the
    staged wheelhouse into ``wheels/`` of the start task's working directory: the
    wheel, every dependency wheel and ``constraints.txt`` pinning them. pip installs
    from there only (``--no-index``), so every node gets the same versions, also
    one that joins weeks later, and a subnet without internet access works.
    """
    packages = "python3-venv" + (f" {JRE_PACKAGE}" if java else "")
    wheel = shlex.quote(f"wheels/{wheel_name}")
    spec = f'"$(realpath {wheel})[{extras}]"' if extras else f'"$(realpath {wheel})"'
    return _bash(
        [
            "export DEBIAN_FRONTEND=noninteractive",
            f"{_APT} update",
            f"{_APT} install -y --no-install-recommends {packages}",
            f'root="{NODE_ROOT}"',
            'mkdir -p "$root/jobs"',
            'python3 -m venv --clear "$root/venv"',
            '"$root/venv/bin/python" -m pip install --quiet --no-cache-dir --no-index'
            f" --find-links wheels --constraint wheels/constraints.txt {spec}",
            'chmod -R a+rX "$root"',
            '"$root/venv/bin/python" -c "import realtime_batch; print(realtime_batch.__version__)"',
        ]
    )


def job_prep_command(*, java: bool) -> str:
    """Job preparation: copy the job's staged files into the node's shared directory.

    Runs once per node before the job's first engine starts there (admin auto-user,
    so a JRE can be installed for jars staged after the pool was created).
    """
    lines = [
        f'dest="{NODE_ROOT}/jobs/$AZ_BATCH_JOB_ID"',
        'rm -rf "$dest"',
        'mkdir -p "$dest/tasks" "$dest/inputs"',
        'if [ -d tasks ]; then cp -a tasks/. "$dest/tasks/"; fi',
        'if [ -d inputs ]; then cp -a inputs/. "$dest/inputs/"; fi',
        'chmod -R a+rX "$dest"',
    ]
    if java:
        lines += _install_jre(only_if_missing=True)
    return _bash(lines)


def engine_command(*, queue: str, prefetch: int, curve: bool = False) -> str:
    """One engine: runs until stopped, in the task's own working directory.

    Its credentials are files Batch downloaded into the task's working directory when
    the task started (``engine-credentials/``): the script makes the folder 0700 and
    the files 0600 (the engine refuses a credential file others can read) and passes
    their paths. No credential is in the task's command line, its environment or the
    job: the Batch service returns those to anyone who can read the account. When a
    payload credential is staged (engines without an identity), the engine and its task
    workers get its *path* in ``RTBATCH_PAYLOAD_STORE`` (``sas-file:PATH``).

    Args:
        queue: the task queue.
        prefetch: the engine's prefetch.
        curve: also pass the staged CURVE keys (``broker.key``, ``engine.key_secret``).
    """
    options = ['--transport-file "$creds/transport"']
    if curve:
        options += [
            '--curve-server-key "$creds/broker.key"',
            '--curve-secret-key-file "$creds/engine.key_secret"',
        ]
    return _bash(
        [
            f'job="{NODE_ROOT}/jobs/$AZ_BATCH_JOB_ID"',
            f'creds="$AZ_BATCH_TASK_WORKING_DIR/{CREDENTIALS_FOLDER}"',
            'chmod 700 "$creds"',
            'chmod 600 "$creds"/*',
            f'if [ -f "$creds/{PAYLOAD_CREDENTIAL}" ]; then export'
            f' {ENV_STORE}="{SAS_FILE}$creds/{PAYLOAD_CREDENTIAL}"; fi',
            'cp -a "$job/inputs/." "$AZ_BATCH_TASK_WORKING_DIR/"',
            f'exec "{NODE_ROOT}/venv/bin/python" -m realtime_batch.engine'
            f" {' '.join(options)} --queue {shlex.quote(queue)}"
            ' --tasks-dir "$job/tasks" --work-dir "$AZ_BATCH_TASK_WORKING_DIR"'
            f' --prefetch {int(prefetch)} --engine-id "$AZ_BATCH_NODE_ID/$AZ_BATCH_TASK_ID"',
        ]
    )
