"""``AzureBatchPool``: engines as long-running tasks on an Azure Batch pool.

Built on ``azure-batch`` 15.x (``azure.batch.BatchClient``) and Blob staging
(:mod:`.staging`). Engines run as **one long-running Batch task per task slot**
(``taskSlotsPerNode`` = engines per node):

* Batch restarts a crashed engine itself (``maxTaskRetryCount``) and
  :meth:`AzureBatchPool.ensure_engines` re-adds one that exited;
* each engine's stdout/stderr go to Blob as output files when it ends (``rtbatch logs``);
* :meth:`AzureBatchPool.repurpose` swaps task files by replacing the job: nodes stay.

Engine credentials never go into the pool, the job or a command line (the Batch
service returns those to anyone who can read the account): they are staged files in
the ``engine-credentials/`` folder, downloaded by each engine task into its working
directory and made private there (:func:`.batch_scripts.engine_command`). For
Service Bus that file holds a SAS *token* with an expiry, signed here with the
policy's key (the key stays with the operator), or only ``servicebus://NAMESPACE``
when engines sign in with a managed identity (``engine_identity``). For ZeroMQ with
CURVE it also holds the broker's public key and the engines' key pair. Engines
without an identity also get ``payload-store``: the job's payload container URL with
a SAS for that container alone (read, write, delete; ``engine_token_lifetime``).
:meth:`AzureBatchPool.renew_engine_credentials` re-stages a fresh token and restarts
the running engines node by node (a running engine does not re-read its file).

The job preparation task only copies the job's files to the node (once per node
and job); it cannot host the engines, because Batch waits for it to *finish*
before running any task of the job.
"""

from __future__ import annotations

import itertools
import logging
import math
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions
from tenacity import (
    RetryError,
    Retrying,
    retry_if_result,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
)

from realtime_batch.payloads import ENV_STORE, BlobStore

from . import batch_scripts as scripts
from .pool import OrchestratorError, Pool, PoolNotFoundError, PoolStateError, StrPath
from .staging import BlobStaging, StagedFile, StagingError

__all__ = ["AzureBatchPool", "PoolSpec", "Progress", "is_root_servicebus_key"]

logger = logging.getLogger(__name__)

#: metadata marking pools and jobs as ours
TAG, TAG_POOL = "rtbatch", "rtbatch-pool"
ENGINE_PREFIX = "engine-"
#: progress(stage, done, total): e.g. ("nodes ready", 1, 4)
Progress = Callable[[str, int, int], None]
_BAD_NODE_STATES = {"starttaskfailed", "unusable", "unknown"}
_READY_NODE_STATES = {"idle", "running"}
#: spot nodes taken back by Azure: they come back on their own, nothing to wait for
_GONE_NODE_STATES = {"preempted"}
#: Batch removes at most this many nodes per request
_REMOVE_BATCH = 100


def _is_servicebus(url: str) -> bool:
    return url.strip().lower().startswith(("endpoint=", "servicebus://"))


def is_root_servicebus_key(url: str) -> bool:
    """True for a Service Bus connection string with the namespace's Manage key."""
    return "sharedaccesskeyname=rootmanagesharedaccesskey" in url.replace(" ", "").lower()


@attrs.frozen
class PoolSpec:
    """Shape of a pool: VM size, node counts, engines per node and image."""

    vm_size: str = "Standard_D2s_v5"
    dedicated_nodes: int = 1
    spot_nodes: int = 0
    engines_per_node: int = 2
    image_publisher: str = "canonical"
    image_offer: str = "ubuntu-24_04-lts"
    image_sku: str = "server"
    image_version: str = "latest"
    node_agent_sku: str = "batch.node.ubuntu 24.04"
    subnet_id: str | None = None
    autoscale_formula: str | None = None
    autoscale_interval: timedelta = timedelta(minutes=5)
    resize_timeout: timedelta = timedelta(minutes=15)


@contextmanager
def _batch_errors(what: str) -> Iterator[None]:
    """Map azure-core errors of one Batch call into the orchestrator's tree."""
    try:
        yield
    except ResourceNotFoundError as exc:
        raise PoolNotFoundError(f"{what}: {exc.message}") from exc
    except AzureError as exc:
        raise OrchestratorError(f"{what}: {exc.message}") from exc


class AzureBatchPool(Pool):
    """A realtime-batch pool on Azure Batch.

    Args:
        batch: a ``BatchClient`` (shared key or a token credential).
        blob_service: storage for staging (wheel, task and input files) and engine logs.
        pool_id: the Batch pool id.
        transport_url: the transport clients open (``Session(pool)`` uses it).
        engine_transport_url: what engines get: a credential limited to Listen on the
            task queue and Send on the results queue. Defaults to ``transport_url``
            unless that carries a Service Bus namespace Manage key (refused).
        spec: pool shape used by :meth:`create`.
        task_files / input_files: staged for the engines.
        wheel: the realtime-batch wheel to install on nodes (built when None).
        wheelhouse: a directory of the wheel's dependency wheels for the nodes
            (Linux x86-64, CPython 3.12); downloaded with ``pip download`` when None.
            Staged with the wheel and a constraints file: nodes install offline.
        queue: task queue the engines pull from.
        queue_lock_duration / queue_max_delivery_count: that queue's settings, given to
            the engines (a crashing task's last delivery then gets an error result).
        prefetch: deliveries each engine holds (default the engine's own,
            ``DEFAULT_PREFETCH`` = 2: the next task is leased while one runs, so no
            broker round trip, tens of milliseconds on Service Bus, comes between two
            tasks; 1 suits long tasks on Service Bus, where nothing spreads the last
            ones over idle engines).
        engine_retries: Batch retries of an engine task that exits non-zero.
        poll_interval: first interval when polling Batch state (grows to 30 s).
        node_identity: resource id of a user-assigned managed identity attached to the
            pool (through ARM) with read access to the staging container: nodes then
            download with it. None: Batch signs the downloads itself from the Batch
            account's auto-storage account (the staging storage account must be it).
            Either way no SAS is stored in the pool or the job.
        drain_timeout: seconds to wait for engines asked to stop before a shrink.
        engine_token_lifetime: validity of the Service Bus SAS token engines get (signed
            here with the engine URL's key, which never reaches the nodes).
        engine_token_renew_before: :meth:`renew_engine_credentials` (and each autoscale
            round) renews the token when it expires within this time.
        engine_identity: resource id of a user-assigned managed identity attached to the
            pool with the Service Bus Data Receiver and Sender roles: engines then get
            ``servicebus://NAMESPACE`` and no secret at all.
        engine_identity_client_id: that identity's client id (engines sign in with it).
        curve_keys_dir: for a ``zmq://`` engine URL, a directory with the broker's public
            key ``broker.key``; the engines' pair ``engine.key``/``engine.key_secret`` is
            generated there when missing (authorize ``engine.key`` as role engine).
        progress: optional callback for long steps.
    """

    def __init__(
        self,
        batch: BatchClient,
        blob_service: BlobServiceClient,
        pool_id: str,
        *,
        transport_url: str,
        engine_transport_url: str | None = None,
        spec: PoolSpec | None = None,
        task_files: Sequence[StrPath] = (),
        input_files: Sequence[StrPath] = (),
        wheel: StrPath | None = None,
        wheelhouse: StrPath | None = None,
        queue: str = "tasks",
        queue_lock_duration: float = 30.0,
        queue_max_delivery_count: int = 10,
        prefetch: int = 2,  # the engine's DEFAULT_PREFETCH (the client imports no engine)
        engine_retries: int = 3,
        poll_interval: float = 5.0,
        container_prefix: str = "rtbatch",
        sas_lifetime: timedelta = timedelta(hours=2),
        node_identity: str | None = None,
        drain_timeout: float = 30.0,
        engine_token_lifetime: timedelta = timedelta(days=7),
        engine_token_renew_before: timedelta = timedelta(days=1),
        engine_identity: str | None = None,
        engine_identity_client_id: str | None = None,
        curve_keys_dir: StrPath | None = None,
        progress: Progress | None = None,
    ) -> None:
        engine_url = engine_transport_url or transport_url
        if is_root_servicebus_key(engine_url) and not engine_identity:
            raise OrchestratorError(
                "refusing to send the Service Bus namespace Manage key to nodes: set "
                "[transport] engine_url to a connection string with Listen on the task "
                "queue and Send on the results queue (see docs/azure.md)"
            )
        if engine_identity and not _is_servicebus(engine_url):
            raise OrchestratorError(
                "[batch] engine_identity signs engines in to Service Bus: the engine "
                "transport must be a Service Bus connection string or servicebus://NAMESPACE"
            )
        if engine_identity and not engine_identity_client_id:
            raise OrchestratorError(
                "[batch] engine_identity needs [batch] engine_identity_client_id (the "
                "identity's client id, which engines sign in with)"
            )
        self.curve_keys_dir = Path(curve_keys_dir) if curve_keys_dir else None
        if self.curve_keys_dir is not None:
            if not engine_url.strip().lower().startswith("zmq://"):
                raise OrchestratorError(
                    "[transport] curve_keys_dir is for a zmq:// engine transport"
                )
            if not (self.curve_keys_dir / "broker.key").is_file():
                raise OrchestratorError(
                    f"[transport] curve_keys_dir {self.curve_keys_dir} has no broker.key "
                    "(the broker's public key: copy it there)"
                )
        self.batch = batch
        self.blob_service = blob_service
        self.pool_id = pool_id
        self.spec = spec or PoolSpec()
        self.task_files = [Path(f) for f in task_files]
        self.input_files = [Path(f) for f in input_files]
        self.wheel = Path(wheel) if wheel else None
        self.wheelhouse = Path(wheelhouse) if wheelhouse else None
        self.queue = queue
        self.queue_settings = {
            "RTBATCH_LOCK_DURATION": str(float(queue_lock_duration)),
            "RTBATCH_MAX_DELIVERY_COUNT": str(int(queue_max_delivery_count)),
        }
        self.prefetch = prefetch
        self.engine_retries = engine_retries
        self.poll_interval = poll_interval
        self.progress = progress
        self.node_identity = node_identity
        self.drain_timeout = drain_timeout
        self.engine_token_lifetime = engine_token_lifetime
        self.engine_token_renew_before = engine_token_renew_before
        self.engine_identity = engine_identity
        self.engine_identity_client_id = engine_identity_client_id
        self._transport_url = transport_url
        self._engine_url = engine_url
        self._staging_options = {"prefix": container_prefix, "sas_lifetime": sas_lifetime}
        self.staging = BlobStaging(blob_service, pool_id, **self._staging_options)
        #: large task values: a container per job of the staging account (#20)
        self.payload_store = BlobStore(blob_service, prefix=container_prefix)
        self._job: str | None = None
        self._slots_per_node = self.spec.engines_per_node
        self._closed = False

    @classmethod
    def from_config(cls, config: Any, **options: Any) -> AzureBatchPool:
        """A pool from a :class:`realtime_batch.config.Config` (``options`` override it)."""
        from realtime_batch.config import batch_client, blob_service

        spec = PoolSpec(
            vm_size=config["batch.vm_size"],
            dedicated_nodes=config["batch.dedicated_nodes"],
            spot_nodes=config["batch.spot_nodes"],
            engines_per_node=config["batch.engines_per_node"],
            image_publisher=config["batch.image_publisher"],
            image_offer=config["batch.image_offer"],
            image_sku=config["batch.image_sku"],
            node_agent_sku=config["batch.node_agent_sku"],
            subnet_id=config["batch.subnet_id"] or None,
            autoscale_formula=config["batch.autoscale_formula"] or None,
        )
        defaults: dict[str, Any] = {
            "transport_url": config["transport.url"],
            "engine_transport_url": config["transport.engine_url"] or None,
            "spec": spec,
            "task_files": config["pool.task_files"],
            "input_files": config["pool.input_files"],
            "wheel": config["batch.wheel"] or None,
            "wheelhouse": config["batch.wheelhouse"] or None,
            "queue": config["transport.queue"],
            "queue_lock_duration": config["transport.lock_duration"],
            "queue_max_delivery_count": config["transport.max_delivery_count"],
            "poll_interval": config["batch.poll_interval"],
            "drain_timeout": config["batch.drain_timeout"],
            "container_prefix": config["storage.container_prefix"],
            "sas_lifetime": timedelta(hours=config["storage.sas_hours"]),
            "node_identity": config["batch.node_identity"] or None,
            "engine_token_lifetime": timedelta(days=config["batch.engine_token_days"]),
            "engine_token_renew_before": timedelta(hours=config["batch.engine_token_renew_hours"]),
            "engine_identity": config["batch.engine_identity"] or None,
            "engine_identity_client_id": config["batch.engine_identity_client_id"] or None,
            "curve_keys_dir": config["transport.curve_keys_dir"] or None,
        }
        defaults.update(options)
        pool_id = defaults.pop("pool_id", config["pool.id"])
        return cls(batch_client(config), blob_service(config), pool_id, **defaults)

    def __repr__(self) -> str:
        return f"AzureBatchPool(pool_id={self.pool_id!r}, job={self._job!r})"

    # ------------------------------------------------------------- properties
    @property
    def transport_url(self) -> str:
        return self._transport_url

    @property
    def job(self) -> str | None:
        return self._job

    @property
    def engines(self) -> int:
        with _batch_errors(f"get pool {self.pool_id}"):
            pool = self.batch.get_pool(self.pool_id)
        nodes = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
        return nodes * (pool.task_slots_per_node or 1)

    @property
    def _poll_int(self) -> Any:
        # the SDK's pollers sleep this long between polls (typed int, any number works)
        return self.poll_interval

    def _report(self, stage: str, done: int, total: int) -> None:
        logger.info("%s: %d/%d", stage, done, total)
        if self.progress is not None:
            self.progress(stage, done, total)

    # ---------------------------------------------------------------- staging
    def stage(self, files: Iterable[StrPath]) -> list[str]:
        """Upload task files (modules, jars) for the next job; return their blob names."""
        self.task_files = [Path(f) for f in files]
        return [f.blob_name for f in self._stage_tasks()]

    def _stage_tasks(self) -> list[StagedFile]:
        tasks = self.staging.upload(self.task_files, "tasks")
        inputs = self.staging.upload(self.input_files, "inputs")
        self.staging.prune("tasks", [f.blob_name for f in tasks])
        self.staging.prune("inputs", [f.blob_name for f in inputs])
        return tasks + inputs

    def _stage_wheel(self) -> StagedFile:
        """Stage the wheel, its dependency wheels and their constraints under ``wheels/``."""
        from .staging import build_wheel, build_wheelhouse, constraints_for

        if self.wheel is None:
            logger.info("no [batch] wheel set: building one from the source tree")
            self.wheel = build_wheel()
        if self.wheelhouse is None:
            logger.info("no [batch] wheelhouse set: downloading the nodes' dependency wheels")
            self.wheelhouse = build_wheelhouse(self.wheel)
        if not self.wheelhouse.is_dir():
            raise OrchestratorError(f"[batch] wheelhouse {self.wheelhouse} is not a directory")
        deps = sorted(
            p for p in self.wheelhouse.glob("*.whl") if not p.name.startswith("realtime_batch-")
        )
        with tempfile.TemporaryDirectory(prefix="rtbatch-constraints-") as tmp:
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text(constraints_for([self.wheel, *deps]))
            staged = self.staging.upload([self.wheel, *deps, constraints], "wheels")
        self.staging.prune("wheels", [f.blob_name for f in staged])
        return staged[0]

    def _engine_transport(self) -> str:
        """What engines connect with: a token, ``servicebus://NAMESPACE`` or the URL."""
        from realtime_batch.transport.servicebus_sas import (
            sas_token_connection_string,
            servicebus_namespace,
        )

        url = self._engine_url
        if self.engine_identity:
            if url.strip().lower().startswith("servicebus://"):
                return url.strip()
            return f"servicebus://{servicebus_namespace(url)}"
        if url.strip().lower().startswith("endpoint=") and "sharedaccesskey=" in url.lower():
            try:
                token, expiry = sas_token_connection_string(url, self.engine_token_lifetime)
            except ValueError as exc:
                raise OrchestratorError(f"cannot sign an engine token: {exc}") from None
            logger.info(
                "engines get a Service Bus token valid until %s", f"{expiry:%Y-%m-%d %H:%M}Z"
            )
            return token
        return url

    def _curve_files(self) -> list[Path]:
        """The broker's public key and the engines' secret key file (generated if missing)."""
        if self.curve_keys_dir is None:
            return []
        from realtime_batch.transport.zeromq.curve import generate_keys

        secret = self.curve_keys_dir / "engine.key_secret"
        if not secret.is_file():
            public, secret = generate_keys(self.curve_keys_dir, "engine")
            logger.warning(
                "generated the engines' CURVE key pair; the broker must authorize %s with "
                "role engine (copy it into AUTHORIZED_KEYS/engine/ and restart the broker)",
                public,
            )
        return [self.curve_keys_dir / "broker.key", secret]

    def _payload_credential(self, job: str) -> str:
        """The job's payload container URL with a SAS for it alone (read, write, delete).

        For engines without an identity (#20); the container is created here, since
        that SAS cannot create it.
        """
        from azure.core.exceptions import AzureError

        container = self.payload_store.container(job)
        try:
            self.payload_store.create(job)
        except AzureError as exc:
            raise OrchestratorError(f"cannot create payload container {container}: {exc}") from exc
        permission = ContainerSasPermissions(read=True, write=True, delete=True)
        return self.staging.container_sas_url(container, permission, self.engine_token_lifetime)

    def _stage_engine_credentials(self, job: str | None = None) -> None:
        """Stage the engines' credential files (and nothing else) in their own folder;
        with ``job`` and no engine identity, its payload container's SAS too."""
        folder = scripts.CREDENTIALS_FOLDER
        with tempfile.TemporaryDirectory(prefix="rtbatch-engine-") as tmp:
            files = [Path(tmp) / "transport"]
            texts = [self._engine_transport()]
            if job and not self.engine_identity:
                files.append(Path(tmp) / scripts.PAYLOAD_CREDENTIAL)
                texts.append(self._payload_credential(job))
            for path, text in zip(files, texts, strict=True):
                path.touch(mode=0o600)
                path.write_text(text)
            staged = self.staging.upload([*files, *self._curve_files()], folder)
        self.staging.prune(folder, [f.blob_name for f in staged])

    def _staged_credential(self, name: str) -> str | None:
        try:
            return self.staging.download(f"{scripts.CREDENTIALS_FOLDER}/{name}").decode()
        except StagingError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return None
            raise

    def engine_credential_expiry(self) -> datetime | None:
        """When the first staged engine credential expires: the Service Bus token or the
        payload container's SAS (None: none staged, or none expires)."""
        from realtime_batch.transport.servicebus_sas import sas_token_expiry

        transport = self._staged_credential("transport")
        payload = self._staged_credential(scripts.PAYLOAD_CREDENTIAL)
        expiries = [
            sas_token_expiry(transport) if transport is not None else None,
            _sas_url_expiry(payload) if payload is not None else None,
        ]
        return min((e for e in expiries if e is not None), default=None)

    def renew_engine_credentials(
        self, within: timedelta | None = None, *, force: bool = False
    ) -> bool:
        """Re-stage a fresh engine token when the staged one expires soon, and restart
        the running engines node by node so they read it.

        A running engine keeps the credential it started with; new engine tasks download
        the staged file when they start. So renewal drains each node's engines (they
        finish their running task, their leases go back) and starts new tasks.

        Args:
            within: renew when the token expires within this time (default
                ``engine_token_renew_before``).
            force: renew (and restart the engines) whatever the expiry, e.g. after
                changing the engine URL's key or the CURVE keys.

        Returns:
            True when the credentials were re-staged.
        """
        if not force:
            expiry = self.engine_credential_expiry()
            margin = self.engine_token_renew_before if within is None else within
            if expiry is None or expiry - datetime.now(timezone.utc) > margin:
                return False
        self._stage_engine_credentials(self._job)
        self._report("engine credentials staged", 1, 1)
        if self._job:
            self._restart_engines(self._job)
        return True

    def _restart_engines(self, job: str) -> None:
        """Replace the running engines, node by node, with new tasks (next generation)."""
        by_node: dict[str, list[tuple[int, int]]] = {}
        for task in self._engine_tasks(job):
            if _state(task.state) == "running" and task.node_info is not None:
                by_node.setdefault(task.node_info.node_id, []).append(_slot_generation(task.id))
        for node, slots in sorted(by_node.items()):
            self._drain([node])
            new = [self._engine_task(job, slot, gen + 1) for slot, gen in sorted(slots)]
            self._add_engine_tasks(job, new)
            logger.info("restarted %d engine(s) on %s with new credentials", len(new), node)

    @property
    def _needs_java(self) -> bool:
        return any(f.suffix == ".jar" for f in self.task_files)

    def _identity(self) -> bm.BatchNodeIdentityReference | None:
        if not self.node_identity:
            return None
        return bm.BatchNodeIdentityReference(resource_id=self.node_identity)

    def _resource_files(self, folders: Iterable[str]) -> list[bm.ResourceFile]:
        """Folders of the staging container, downloaded by the node when it needs them.

        Nothing here expires: Batch signs auto-storage downloads itself at download
        time, and a pool identity asks for its own token. A node that reboots or joins
        weeks later downloads the files the container holds then.
        """
        identity = self._identity()
        if identity is not None:
            url = self.staging.container_url()
            return [
                bm.ResourceFile(
                    storage_container_url=url, blob_prefix=f"{f}/", identity_reference=identity
                )
                for f in folders
            ]
        return [
            bm.ResourceFile(auto_storage_container_name=self.staging.container, blob_prefix=f"{f}/")
            for f in folders
        ]

    def _start_task(self, wheel: StagedFile) -> bm.BatchStartTask:
        return bm.BatchStartTask(
            command_line=scripts.start_task_command(wheel.file_name, java=self._needs_java),
            resource_files=self._resource_files(["wheels"]),
            user_identity=_auto_user(admin=True),
            max_task_retry_count=2,
            wait_for_success=True,
        )

    # --------------------------------------------------------------- lifecycle
    def create(self, **options: Any) -> AzureBatchPool:
        """Stage the wheel and files, create the pool and wait until its nodes are ready.

        Args:
            **options: ``wait=False`` returns as soon as Batch accepted the pool.

        Raises:
            PoolStateError: a pool with this id already exists (``use_existing`` it).
        """
        spec = self.spec
        if spec.subnet_id and isinstance(self.batch._config.credential, AzureNamedKeyCredential):
            raise OrchestratorError(
                "a pool in a virtual network ([batch] subnet_id) needs Microsoft Entra ID "
                "authentication for Batch: leave batch.account_key empty and sign in "
                "(DefaultAzureCredential), see docs/azure.md"
            )
        wheel = self._stage_wheel()
        self._stage_tasks()
        config = bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(
                publisher=spec.image_publisher,
                offer=spec.image_offer,
                sku=spec.image_sku,
                version=spec.image_version,
            ),
            node_agent_sku_id=spec.node_agent_sku,
        )
        pool = bm.BatchPoolCreateOptions(
            id=self.pool_id,
            vm_size=spec.vm_size,
            virtual_machine_configuration=config,
            task_slots_per_node=spec.engines_per_node,
            task_scheduling_policy=bm.BatchTaskSchedulingPolicy(node_fill_type="spread"),
            start_task=self._start_task(wheel),
            metadata=[bm.BatchMetadataItem(name=TAG, value="1")],
        )
        if spec.autoscale_formula:
            pool.enable_auto_scale = True
            pool.auto_scale_formula = spec.autoscale_formula
            pool.auto_scale_evaluation_interval = spec.autoscale_interval
        else:
            pool.target_dedicated_nodes = spec.dedicated_nodes
            pool.target_low_priority_nodes = spec.spot_nodes
            pool.resize_timeout = spec.resize_timeout
        if spec.subnet_id:
            pool.network_configuration = bm.NetworkConfiguration(subnet_id=spec.subnet_id)
        try:
            with _batch_errors(f"create pool {self.pool_id}"):
                self.batch.create_pool(pool)
        except OrchestratorError as exc:
            if isinstance(exc.__cause__, ResourceExistsError):
                raise PoolStateError(
                    f"pool {self.pool_id!r} already exists: use it (rtbatch pool use) "
                    "or repurpose it"
                ) from exc
            raise
        logger.info("created pool %s (%s)", self.pool_id, spec.vm_size)
        if options.get("wait", True):
            self.wait_ready()
        return self

    def use_existing(self, pool_id: str) -> AzureBatchPool:
        """Attach to an existing pool (nodes, slots and staging container)."""
        with _batch_errors(f"get pool {pool_id}"):
            pool = self.batch.get_pool(pool_id)
        if not any(m.name == TAG for m in pool.metadata or []):
            logger.warning("pool %s was not created by realtime-batch", pool_id)
        self.pool_id = pool_id
        self._slots_per_node = pool.task_slots_per_node or 1
        self.staging = BlobStaging(self.blob_service, pool_id, **self._staging_options)
        ours = self.jobs()
        self._job = ours[-1] if ours else None
        return self

    def wait_ready(self, timeout: float = 1800.0) -> None:
        """Poll (with backoff) until allocation is steady, every node is ready and, when a
        job runs, every engine that has a usable slot is running.

        Preempted spot nodes are not waited for (Azure brings them back when it can);
        their engines wait in the job until then.

        Raises:
            PoolStateError: resize errors, a failed start task or job preparation, or
                the timeout.
        """
        self._poll_until(self._ready, timeout, "ready")

    def _poll_until(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """Call ``check`` with exponential backoff until it returns something true."""
        retrying = Retrying(
            retry=retry_if_result(lambda ok: not ok),
            wait=wait_exponential(multiplier=self.poll_interval, max=30),
            stop=stop_after_delay(timeout),
            reraise=True,
        )
        try:
            return retrying(check)
        except RetryError as exc:
            raise PoolStateError(f"pool {self.pool_id} not {what} after {timeout:.0f} s") from exc

    def _ready(self) -> bool:
        with _batch_errors(f"get pool {self.pool_id}"):
            pool = self.batch.get_pool(self.pool_id)
            nodes = list(self.batch.list_nodes(self.pool_id))
        if pool.resize_errors:
            errors = "; ".join(f"{e.code}: {e.message}" for e in pool.resize_errors)
            raise PoolStateError(f"pool {self.pool_id} could not allocate nodes: {errors}")
        bad = [n for n in nodes if _state(n.state) in _BAD_NODE_STATES]
        if bad:
            raise PoolStateError(
                f"nodes not usable: {', '.join(f'{n.id} ({_state(n.state)})' for n in bad)}; "
                "their start task output is in the Batch portal (startup/stderr.txt)"
            )
        target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
        ready = sum(_state(n.state) in _READY_NODE_STATES for n in nodes)
        gone = sum(_state(n.state) in _GONE_NODE_STATES for n in nodes)
        steady = _state(pool.allocation_state) == "steady"
        self._report("nodes ready", ready, target - gone)
        if not (steady and len(nodes) == target and ready + gone == target):
            return False
        return self._job is None or self._engines_ready(gone * (pool.task_slots_per_node or 1))

    def _engines_ready(self, lost_slots: int) -> bool:
        """Engines of the job run, except those waiting for preempted nodes' slots."""
        job = self._job
        assert job is not None
        with _batch_errors(f"job preparation status of {job}"):
            preps = list(self.batch.list_job_preparation_and_release_task_status(job))
        infos = [(p.node_id, p.job_preparation_task_execution_info) for p in preps]
        failed = [(n, i) for n, i in infos if i is not None and _state(i.result) == "failure"]
        if failed:
            reasons = "; ".join(f"{n}: {getattr(i.failure_info, 'message', '')}" for n, i in failed)
            raise PoolStateError(
                f"the job preparation of {job} failed, engines cannot start: {reasons}"
            )
        engines = self._engine_tasks(job)
        pending = sum(_state(t.state) == "active" for t in engines)
        running = sum(_state(t.state) == "running" for t in engines)
        self._report("engines running", running, len(engines))
        return pending <= lost_slots

    def _engine_tasks(self, job: str) -> list[bm.BatchTask]:
        with _batch_errors(f"list tasks of {job}"):
            return [t for t in self.batch.list_tasks(job) if t.id.startswith(ENGINE_PREFIX)]

    def _wait_steady(self, timeout: float = 1800.0) -> bm.BatchPool:
        """The pool once its allocation is steady (Batch refuses a resize while resizing)."""

        def steady() -> bm.BatchPool | None:
            with _batch_errors(f"get pool {self.pool_id}"):
                pool = self.batch.get_pool(self.pool_id)
            return pool if _state(pool.allocation_state) == "steady" else None

        return self._poll_until(steady, timeout, "steady")

    def resize(self, engines: int) -> None:
        """Resize to ``ceil(engines / engines_per_node)`` nodes (spot nodes kept first)."""
        nodes = math.ceil(engines / self._slots_per_node)
        with _batch_errors(f"get pool {self.pool_id}"):
            spot = min(self.batch.get_pool(self.pool_id).target_low_priority_nodes or 0, nodes)
        self.resize_nodes(nodes - spot, spot)

    def resize_nodes(self, dedicated: int, spot: int = 0, *, wait: bool = True) -> None:
        """Set the dedicated and spot node counts; engines follow the new slot count.

        Shrinking first drains the nodes chosen to leave: their engines are asked to
        stop through the transport (their leases go back to the queue), their tasks
        are deleted, then exactly those nodes are removed (``requeue``: Batch does
        not wait for tasks that never end).
        """
        pool = self._wait_steady()
        have_dedicated = pool.target_dedicated_nodes or 0
        have_spot = pool.target_low_priority_nodes or 0
        if dedicated < have_dedicated or spot < have_spot:
            leaving = self._choose_leaving(have_dedicated - dedicated, have_spot - spot)
            self._drain(leaving)
            for start in range(0, len(leaving), _REMOVE_BATCH):
                options = bm.BatchNodeRemoveOptions(
                    node_ids=leaving[start : start + _REMOVE_BATCH],
                    node_deallocation_option="requeue",
                )
                with _batch_errors(f"remove nodes from {self.pool_id}"):
                    self.batch.begin_remove_nodes(
                        self.pool_id, options, polling_interval=self._poll_int
                    )
                pool = self._wait_steady()
        if (pool.target_dedicated_nodes or 0, pool.target_low_priority_nodes or 0) != (
            dedicated,
            spot,
        ):
            options = bm.BatchPoolResizeOptions(
                target_dedicated_nodes=dedicated,
                target_low_priority_nodes=spot,
                node_deallocation_option="requeue",
            )
            with _batch_errors(f"resize pool {self.pool_id}"):
                # the poller's thread follows the resize; wait_ready() reports progress
                self.batch.begin_resize_pool(self.pool_id, options, polling_interval=self._poll_int)
        if wait:
            self.wait_ready()
            if self._job:
                self.ensure_engines(self._job)
                self.wait_ready()

    def _choose_leaving(self, dedicated: int, spot: int) -> list[str]:
        """Nodes to remove: broken or preempted ones first, then idle, then the newest."""
        with _batch_errors(f"list nodes of {self.pool_id}"):
            nodes = list(self.batch.list_nodes(self.pool_id))
        order = {**dict.fromkeys(_BAD_NODE_STATES | _GONE_NODE_STATES, 0), "idle": 1}
        chosen: list[str] = []
        for is_dedicated, count in ((True, dedicated), (False, spot)):
            kind = [n for n in reversed(nodes) if bool(n.is_dedicated) is is_dedicated]
            kind.sort(key=lambda n: order.get(_state(n.state), 2))
            chosen += [n.id for n in kind[: max(count, 0)]]
        return chosen

    def _drain(self, node_ids: list[str]) -> None:
        """Stop the engines on ``node_ids`` through the transport, then delete their tasks."""
        job = self._job
        if not job or not node_ids:
            return
        leaving = set(node_ids)
        tasks = [
            t
            for t in self._engine_tasks(job)
            if t.node_info is not None and t.node_info.node_id in leaving
        ]
        if not tasks:
            return
        from realtime_batch.control import CONTROL_QUEUE, stop_message
        from realtime_batch.transport import open_transport
        from realtime_batch.transport.errors import TransportError

        try:
            with open_transport(self._transport_url) as transport:
                transport.declare_queue(CONTROL_QUEUE, grouped=True)  # as a Session does
                transport.send(
                    CONTROL_QUEUE, [stop_message(f"{t.node_info.node_id}/{t.id}") for t in tasks]
                )
        except TransportError as exc:  # the engines then stop when their tasks are deleted
            logger.warning("could not ask %d engine(s) to stop: %s", len(tasks), exc)
        ids = {t.id for t in tasks}

        def stopped() -> bool:
            return all(
                _state(t.state) == "completed" for t in self._engine_tasks(job) if t.id in ids
            )

        # engines finish their running task and exit; past the timeout they are killed
        Retrying(
            retry=retry_if_result(lambda ok: not ok),
            wait=wait_fixed(min(self.poll_interval, 1.0)),
            stop=stop_after_delay(self.drain_timeout),
            retry_error_callback=lambda state: False,
        )(stopped)
        for task_id in sorted(ids):
            try:
                with _batch_errors(f"delete task {task_id}"):
                    self.batch.delete_task(job, task_id)
            except PoolNotFoundError:
                pass
        self._report("engines drained", len(ids), len(ids))

    @property
    def slots_per_node(self) -> int:
        """Engines (task slots) per node."""
        return self._slots_per_node

    def node_targets(self) -> tuple[int, int]:
        """The pool's target dedicated and spot node counts."""
        with _batch_errors(f"get pool {self.pool_id}"):
            pool = self.batch.get_pool(self.pool_id)
        return pool.target_dedicated_nodes or 0, pool.target_low_priority_nodes or 0

    def autoscale(
        self,
        min_nodes: int,
        max_nodes: int,
        *,
        tasks_per_engine: float = 1.0,
        idle_after: float = 600.0,
        interval: float = 30.0,
        spot: bool = False,
        rounds: int | None = None,
        counts: Callable[[], Any] | None = None,
    ) -> None:
        """Run the autoscale controller (see :mod:`.autoscale`) until interrupted.

        Args:
            min_nodes / max_nodes: node count bounds.
            tasks_per_engine: queued or running tasks per engine wanted.
            idle_after: seconds of an empty queue before shrinking.
            interval: seconds between looks at the queue.
            spot: grow with spot nodes.
            rounds: stop after that many steps (None: until KeyboardInterrupt).
            counts: the queue's counts (default: ``queue_counts`` of the pool's transport).
        """
        from .autoscale import AutoscalePolicy, Autoscaler

        policy = AutoscalePolicy(min_nodes, max_nodes, tasks_per_engine, idle_after, interval, spot)
        if counts is not None:
            Autoscaler(self, policy, counts).run(rounds)
            return
        from realtime_batch.transport import open_transport

        with open_transport(self._transport_url) as transport:
            Autoscaler(self, policy, lambda: transport.queue_counts(self.queue)).run(rounds)

    def autoscale_formula(self, formula: str, interval: timedelta = timedelta(minutes=5)) -> None:
        """Switch the pool to a Batch autoscale formula (``$TargetDedicatedNodes = ...``).

        A formula sees Batch tasks, not the queue: engines never end, so use it for
        schedules (e.g. nodes during office hours), and :meth:`autoscale` for load.
        """
        options = bm.BatchPoolEnableAutoScaleOptions(
            auto_scale_formula=formula, auto_scale_evaluation_interval=interval
        )
        with _batch_errors(f"enable autoscale on {self.pool_id}"):
            self.batch.enable_pool_auto_scale(self.pool_id, options)

    def _refresh_start_task(self) -> None:
        """Re-sign the start task's resource files (SAS) for nodes that join later."""
        wheel = self._stage_wheel()
        with _batch_errors(f"get pool {self.pool_id}"):
            pool = self.batch.get_pool(self.pool_id)
        options = bm.BatchPoolReplaceOptions(
            start_task=self._start_task(wheel),
            application_package_references=pool.application_package_references or [],
            metadata=pool.metadata or [],
        )
        with _batch_errors(f"update pool {self.pool_id}"):
            self.batch.replace_pool_properties(self.pool_id, options)

    def repurpose(
        self,
        pool_id: str | None = None,
        task_files: Sequence[StrPath] = (),
        input_files: Sequence[StrPath] = (),
    ) -> AzureBatchPool:
        """Stage new files and restart the engines under a new job; nodes are kept."""
        if pool_id and pool_id != self.pool_id:
            self.use_existing(pool_id)
        self.task_files = [Path(f) for f in task_files]
        self.input_files = [Path(f) for f in input_files]
        self.delete_jobs()
        self._refresh_start_task()
        self.start_engines()
        return self

    def delete(self, wait: bool = False) -> None:
        """Delete our jobs, the pool and the staging container (logs are kept).

        Args:
            wait: block until Batch has removed the pool (minutes).
        """
        self.delete_jobs()
        with _batch_errors(f"delete pool {self.pool_id}"):
            poller = self.batch.begin_delete_pool(self.pool_id, polling_interval=self._poll_int)
            if wait:
                poller.result()
        self.staging.delete(keep_logs=True)
        logger.info("deleting pool %s", self.pool_id)
        self.close()

    def close(self) -> None:
        """Close the clients (the pool keeps running)."""
        if not self._closed:
            self._closed = True
            self.batch.close()
            self.blob_service.close()

    # ---------------------------------------------------------------- listing
    def list(self) -> list[dict[str, Any]]:
        """Pools of this account created by realtime-batch, as plain dicts."""
        with _batch_errors("list pools"):
            pools = list(self.batch.list_pools())
        return [
            {
                "id": p.id,
                "state": _state(p.state),
                "allocation": _state(p.allocation_state),
                "vm_size": p.vm_size,
                "dedicated": p.current_dedicated_nodes or 0,
                "spot": p.current_low_priority_nodes or 0,
                "engines_per_node": p.task_slots_per_node or 1,
            }
            for p in pools
            if any(m.name == TAG for m in p.metadata or [])
        ]

    def jobs(self, all_pools: bool = False) -> list[str]:
        """Ids of our jobs on this pool (every pool with ``all_pools``), oldest first."""
        with _batch_errors("list jobs"):
            jobs = list(self.batch.list_jobs())
        ours = [
            j
            for j in jobs
            if _state(j.state) not in ("deleting", "completed")
            and any(
                m.name == TAG_POOL and (all_pools or m.value == self.pool_id)
                for m in j.metadata or []
            )
        ]
        ours.sort(key=lambda j: j.creation_time or datetime.min.replace(tzinfo=timezone.utc))
        return [j.id for j in ours]

    def delete_job(self, job: str, wait: bool = False) -> None:
        """Delete a job: its engines stop (their logs are uploaded)."""
        with _batch_errors(f"delete job {job}"):
            poller = self.batch.begin_delete_job(job, polling_interval=self._poll_int)
            if wait:
                poller.result()
        if job == self._job:
            self._job = None
        self.payload_store.drop_job(job)

    # ---------------------------------------------------------------- engines
    def start_engines(self, job: str | None = None) -> str:
        """Create a job on the pool and one engine task per task slot; return its id."""
        self._stage_tasks()
        job_id = job or f"rtbatch-{self.pool_id}-{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
        job_id += "" if job else f"-{uuid.uuid4().hex[:4]}"
        self._stage_engine_credentials(job_id)
        prep = bm.BatchJobPreparationTask(
            command_line=scripts.job_prep_command(java=self._needs_java),
            resource_files=self._resource_files(["tasks", "inputs"]),
            user_identity=_auto_user(admin=True),
            wait_for_success=True,
            rerun_on_node_reboot_after_success=True,
        )
        options = bm.BatchJobCreateOptions(
            id=job_id,
            pool_info=bm.BatchPoolInfo(pool_id=self.pool_id),
            job_preparation_task=prep,
            metadata=[
                bm.BatchMetadataItem(name=TAG, value="1"),
                bm.BatchMetadataItem(name=TAG_POOL, value=self.pool_id),
            ],
        )
        with _batch_errors(f"create job {job_id}"):
            self.batch.create_job(options)
        self._job = job_id
        self.ensure_engines(job_id)
        return job_id

    def _slots(self) -> int:
        with _batch_errors(f"get pool {self.pool_id}"):
            pool = self.batch.get_pool(self.pool_id)
        nodes = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
        return nodes * (pool.task_slots_per_node or 1)

    def _engine_task(self, job: str, slot: int, generation: int) -> bm.BatchTaskCreateOptions:
        task_id = f"{ENGINE_PREFIX}{slot:04d}-r{generation}"
        identity = self._identity()
        # with a pool identity the logs need no SAS; else a create/write-only one
        logs = self.staging.logs_url() if identity else self.staging.log_container_url()
        outputs = [
            bm.OutputFile(
                file_pattern=pattern,
                destination=bm.OutputFileDestination(
                    container=bm.OutputFileBlobContainerDestination(
                        container_url=logs,
                        path=f"{job}/{task_id}/{name}",
                        identity_reference=identity,
                    )
                ),
                upload_options=bm.OutputFileUploadConfiguration(upload_condition="taskcompletion"),
            )
            for pattern, name in (("../stdout.txt", "stdout.txt"), ("../stderr.txt", "stderr.txt"))
        ]
        return bm.BatchTaskCreateOptions(
            id=task_id,
            display_name=f"realtime-batch engine {slot}",
            command_line=scripts.engine_command(
                queue=self.queue, prefetch=self.prefetch, curve=self.curve_keys_dir is not None
            ),
            # its credentials: downloaded when the task starts, private to it then
            resource_files=self._resource_files([scripts.CREDENTIALS_FOLDER]),
            user_identity=_auto_user(admin=False),
            # the queue's settings and the identity's client id (not secrets)
            environment_settings=[
                bm.EnvironmentSetting(name=k, value=v) for k, v in self._engine_env().items()
            ],
            constraints=bm.BatchTaskConstraints(max_task_retry_count=self.engine_retries),
            output_files=outputs,
            required_slots=1,
        )

    def _engine_env(self) -> dict[str, str]:
        env = dict(self.queue_settings)
        if self.engine_identity and self.engine_identity_client_id:
            # DefaultAzureCredential's managed identity on the node uses this client id
            env["AZURE_CLIENT_ID"] = self.engine_identity_client_id
            # the payload store: the engines' identity reads and writes it (#20)
            env[ENV_STORE] = self.blob_service.url
        return env

    def _add_engine_tasks(self, job: str, new: list[bm.BatchTaskCreateOptions]) -> None:
        if not new:
            return
        with _batch_errors(f"add engine tasks to {job}"):
            result = self.batch.create_tasks(job, new)
        failed = [r for r in result.result_values or [] if _state(r.status) != "success"]
        if failed:
            raise OrchestratorError(f"adding engines failed: {[r.task_id for r in failed]}")

    def ensure_engines(self, job: str | None = None) -> list[str]:
        """Add engine tasks for empty slots and re-add engines that exited.

        Returns:
            ids of the tasks added.
        """
        job = job or self._job
        if job is None:
            raise PoolStateError("no job: call start_engines() first")
        slots = self._slots()
        latest: dict[int, tuple[int, bm.BatchTask]] = {}
        for task in self._engine_tasks(job):
            slot, gen = _slot_generation(task.id)
            if slot not in latest or gen > latest[slot][0]:
                latest[slot] = (gen, task)
        live = {k: t for k, (_, t) in latest.items() if _state(t.state) != "completed"}
        room = slots - len(live)
        new = []
        for slot, (gen, task) in sorted(latest.items()):
            if slot not in live and room > 0:
                logger.warning("engine %s exited; starting it again", task.id)
                new.append(self._engine_task(job, slot, gen + 1))
                room -= 1
        unused = (i for i in itertools.count() if i not in latest)
        new += [self._engine_task(job, next(unused), 0) for _ in range(max(room, 0))]
        # more engines than slots (a shrink not drained by us): drop pending ones first
        surplus = sorted(live.items(), key=lambda kv: (_state(kv[1].state) != "active", -kv[0]))
        for _, task in surplus[: max(-room, 0)]:
            with _batch_errors(f"delete task {task.id}"):
                self.batch.delete_task(job, task.id)
        self._add_engine_tasks(job, new)
        self._report("engines started", len(new), slots)
        return [t.id for t in new]

    def logs(self, dest: StrPath, job: str | None = None) -> list[Path]:
        """Download engine logs (of ``job``, or all) into ``dest``."""
        return self.staging.download_logs(dest, prefix=f"{job}/" if job else "")


def _sas_url_expiry(url: str) -> datetime | None:
    """When a SAS URL's signature expires (its ``se``), None when it has none."""
    from urllib.parse import parse_qs, urlsplit

    [expiry] = parse_qs(urlsplit(url.strip()).query).get("se", [None])
    return None if expiry is None else datetime.fromisoformat(expiry.replace("Z", "+00:00"))


def _slot_generation(task_id: str) -> tuple[int, int]:
    """``engine-0003-r2`` -> (3, 2)."""
    slot_text, _, gen_text = task_id[len(ENGINE_PREFIX) :].partition("-r")
    return int(slot_text), int(gen_text or 0)


def _state(value: Any) -> str:
    """An SDK enum (or plain string) as its lower-case wire value."""
    return str(getattr(value, "value", value) or "").lower()


def _auto_user(*, admin: bool) -> bm.UserIdentity:
    return bm.UserIdentity(
        auto_user=bm.AutoUserSpecification(
            scope="pool", elevation_level="admin" if admin else "nonadmin"
        )
    )
