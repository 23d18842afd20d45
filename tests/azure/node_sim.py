"""Plays the Batch nodes for the Batch fake: engine tasks become local processes.

For each engine task the fake receives, the simulator does on a "node" directory
what a Batch node does, with the files the orchestrator staged:

* start task: downloads its resource files (the wheel) as Batch would: through their
  SAS URLs, or from the linked auto-storage account (``autoStorageContainerName``); the
  script itself (apt, venv, pip) is not run: ``venv/bin/python`` is a wrapper around
  this test interpreter, which has realtime-batch installed;
* job preparation (once per node and job): downloads the task and input files via
  their SAS URLs and runs the real job preparation command line;
* the engine task: downloads its resource files (its credentials) into its working
  directory, runs its real command line (``/bin/bash -c ...``) with the
  ``AZ_BATCH_*`` variables and the task's environment settings, then uploads the
  output files (stdout/stderr) with the write-only SAS when it exits.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import requests

__all__ = ["NodeSimulator"]


class NodeSimulator:
    """Attach with ``BatchFake(on_task=sim)``; call :meth:`stop` at teardown.

    Args:
        root: directory holding one sub-directory per node.
        auto_storage: connection string of the storage account linked to the Batch
            account (what ``autoStorageContainerName`` resource files come from).
    """

    def __init__(self, root: Path, auto_storage: str | None = None) -> None:
        self.root = root
        self.auto_storage = auto_storage
        self.procs: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []
        self.prepared: set[tuple[str, str]] = set()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stopped = False

    def __call__(self, fake: Any, pool_id: str, job_id: str, task: dict[str, Any]) -> None:
        pool, job = fake.pools[pool_id], fake.jobs[job_id]
        thread = threading.Thread(target=self._run, args=(fake, pool, job, dict(task)), daemon=True)
        self.threads.append(thread)
        thread.start()

    # ----------------------------------------------------------------- steps
    def _download(self, resources: list[dict[str, Any]], wd: Path) -> None:
        for resource in resources:
            if resource.get("autoStorageContainerName"):
                self._download_container(resource, wd)
                continue
            got = requests.get(resource["httpUrl"], timeout=30)
            got.raise_for_status()
            target = wd / resource["filePath"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(got.content)

    def _download_container(self, resource: dict[str, Any], wd: Path) -> None:
        from azure.storage.blob import BlobServiceClient

        if not self.auto_storage:
            raise RuntimeError("no auto-storage account linked to the Batch account")
        service = BlobServiceClient.from_connection_string(self.auto_storage)
        container = service.get_container_client(resource["autoStorageContainerName"])
        base = wd / resource.get("filePath", "")
        for blob in container.list_blobs(name_starts_with=resource.get("blobPrefix") or None):
            target = base / blob.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(container.download_blob(blob.name).readall())

    def _node(self, pool: dict[str, Any], node_id: str) -> Path:
        node = self.root / node_id
        venv_python = node / "shared/rtbatch/venv/bin/python"
        with self._lock:
            if venv_python.exists():
                return node
            startup = node / "startup/wd"
            startup.mkdir(parents=True)
            self._download(pool["startTask"].get("resourceFiles", []), startup)
            venv_python.parent.mkdir(parents=True)
            venv_python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
            venv_python.chmod(0o755)
            return node

    @staticmethod
    def _env(
        node: Path, job: dict[str, Any], task_id: str, wd: Path, task: dict[str, Any] | None = None
    ) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(node)}
        env.update(
            AZ_BATCH_NODE_SHARED_DIR=str(node / "shared"),
            AZ_BATCH_NODE_ID=node.name,
            AZ_BATCH_JOB_ID=job["id"],
            AZ_BATCH_TASK_ID=task_id,
            AZ_BATCH_TASK_WORKING_DIR=str(wd),
        )
        for setting in job.get("commonEnvironmentSettings", []):
            env[setting["name"]] = setting["value"]
        for setting in (task or {}).get("environmentSettings", []):
            env[setting["name"]] = setting["value"]
        return env

    def _prepare(self, node: Path, job: dict[str, Any]) -> None:
        with self._lock:
            if (node.name, job["id"]) in self.prepared:
                return
            prep = job["jobPreparationTask"]
            wd = node / "workitems" / job["id"] / "jobpreparation/wd"
            wd.mkdir(parents=True)
            self._download(prep.get("resourceFiles", []), wd)
            done = subprocess.run(
                shlex.split(prep["commandLine"]),
                cwd=wd,
                env=self._env(node, job, "jobpreparation", wd),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"job preparation failed: {done.stderr}")
            self.prepared.add((node.name, job["id"]))

    def _run(self, fake: Any, pool: dict[str, Any], job: dict[str, Any], task: dict) -> None:
        try:
            node = self._node(pool, task["nodeInfo"]["nodeId"])
            self._prepare(node, job)
            task_dir = node / "workitems" / job["id"] / task["id"]
            wd = task_dir / "wd"
            wd.mkdir(parents=True)
            self._download(task.get("resourceFiles", []), wd)
            with (
                open(task_dir / "stdout.txt", "wb") as out,
                open(task_dir / "stderr.txt", "wb") as err,
            ):
                proc = subprocess.Popen(
                    shlex.split(task["commandLine"]),
                    cwd=wd,
                    env=self._env(node, job, task["id"], wd, task),
                    stdout=out,
                    stderr=err,
                )
            with self._lock:
                self.procs.append(proc)
                if self._stopped:
                    proc.terminate()
            fake.set_task_state(job["id"], task["id"], "running")
            code = proc.wait()
            fake.set_task_state(job["id"], task["id"], "completed", exit_code=code)
            self._upload_outputs(task, wd)
        except Exception as exc:  # reported by the test through .errors
            self.errors.append(f"{task['id']}: {exc!r}")

    @staticmethod
    def _upload_outputs(task: dict[str, Any], wd: Path) -> None:
        for output in task.get("outputFiles", []):
            source = (wd / output["filePattern"]).resolve()
            if not source.is_file():
                continue
            container = output["destination"]["container"]
            base, _, sas = container["containerUrl"].partition("?")
            put = requests.put(
                f"{base}/{container['path']}?{sas}",
                data=source.read_bytes(),
                headers={"x-ms-blob-type": "BlockBlob"},
                timeout=30,
            )
            put.raise_for_status()

    def stop(self) -> None:
        """Terminate every engine (SIGTERM, then SIGKILL) and wait for the uploads."""
        with self._lock:
            self._stopped = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for thread in self.threads:
            thread.join(timeout=30)
