"""Issue #16 items 5 and 6: no secret in what the Batch service stores, engine credentials
as staged files (Service Bus SAS token with an expiry, managed identity, CURVE keys)."""

from __future__ import annotations

import base64
import json
import secrets
import stat
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs

import pytest
import zmq.auth
from azure.storage.blob import BlobServiceClient
from azure_fixtures import ENGINE_URL
from batch_fake import DEFAULT_KEY

from realtime_batch.orchestrator.azure_batch import PoolSpec
from realtime_batch.orchestrator.pool import OrchestratorError
from realtime_batch.transport.servicebus_sas import sas_token_expiry

SB_KEY = base64.b64encode(secrets.token_bytes(32)).decode()
SB_URL = (
    "Endpoint=sb://rtbatch-test.servicebus.windows.net/;SharedAccessKeyName=engine;"
    f"SharedAccessKey={SB_KEY}"
)
ZMQ_PASSWORD = secrets.token_hex(12)
IDENTITY = (
    "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/"
    "userAssignedIdentities/rtbatch-engines"
)
SPEC = PoolSpec(dedicated_nodes=1, spot_nodes=1, engines_per_node=2)
PATTERNS = ("SharedAccessKey=", "AccountKey=", "sig=", "SharedAccessSignature")


def _scanned_text(request: dict, allow_log_sas: bool) -> str:
    """Everything a request carried but the Authorization header the SDK computes."""
    body = request["body"]
    if allow_log_sas and isinstance(body, dict):
        body = json.loads(json.dumps(body))
        for task in body.get("value", [body]):
            for output in task.get("outputFiles", []) if isinstance(task, dict) else []:
                container = output["destination"]["container"]
                base, _, sas = container["containerUrl"].partition("?")
                # the only signed URL allowed: create/write-only, on the logs container
                assert base.endswith("-logs") and parse_qs(sas)["sp"] == ["cw"], base
                container["containerUrl"] = base
    headers = {k: v for k, v in request["headers"].items() if k.lower() != "authorization"}
    return json.dumps([request["path"], request["query"], headers, body])


def _scan(fake, secret_values: list[str], allow_log_sas: bool) -> None:
    assert fake.requests, "nothing recorded"
    for request in fake.requests:
        text = _scanned_text(request, allow_log_sas)
        for value in [*secret_values, *PATTERNS]:
            assert value not in text, f"{value[:20]}... in {request['method']} {request['path']}"


def _storage_key(azurite: str) -> str:
    return BlobServiceClient.from_connection_string(azurite).credential.account_key


def _run_lifecycle(pool) -> str:
    pool.create()
    job = pool.start_engines()
    pool.resize_nodes(2, 1)
    pool.resize_nodes(1, 0)
    return job


def _staged(pool, name: str) -> bytes:
    container = pool.staging.service.get_container_client(pool.staging.container)
    return container.download_blob(f"engine-credentials/{name}").readall()


def _engine_tasks(fake, job: str) -> list[dict]:
    return list(fake.tasks[job].values())


# ------------------------------------------------------------------------- the scan


def test_no_servicebus_storage_or_batch_secret_in_any_request(make_pool, batch_fake, azurite):
    fake, _ = batch_fake
    pool = make_pool(spec=SPEC, engine_transport_url=SB_URL)
    job = _run_lifecycle(pool)
    secrets_given = [SB_KEY, SB_URL, _storage_key(azurite), azurite, DEFAULT_KEY]
    _scan(fake, secrets_given, allow_log_sas=True)
    assert "commonEnvironmentSettings" not in fake.jobs[job]
    # the engine's credential is a staged file holding a token, not the key
    token = _staged(pool, "transport").decode()
    assert SB_KEY not in token and "SharedAccessKey=" not in token
    assert token.startswith("Endpoint=sb://rtbatch-test.servicebus.windows.net/;")
    assert "SharedAccessSignature=SharedAccessSignature sr=" in token
    expiry = sas_token_expiry(token)
    assert expiry is not None
    assert timedelta(days=6, hours=23) < expiry - datetime.now(timezone.utc) <= timedelta(days=7)


def test_no_secret_and_no_signed_url_with_a_node_identity(make_pool, batch_fake, azurite):
    fake, _ = batch_fake
    node_identity = IDENTITY.replace("rtbatch-engines", "rtbatch-nodes")
    pool = make_pool(spec=SPEC, engine_transport_url=SB_URL, node_identity=node_identity)
    pool.create(wait=False)
    pool.start_engines()
    _scan(fake, [SB_KEY, SB_URL, _storage_key(azurite), azurite, DEFAULT_KEY], False)
    [task, *_] = fake.bodies("POST", r"/jobs/.*/addtaskcollection")[0]["value"]
    output = task["outputFiles"][0]["destination"]["container"]
    assert output["identityReference"] == {"resourceId": node_identity}
    assert "?" not in output["containerUrl"]


def test_zmq_pool_with_curve_sends_no_key_or_password(make_pool, batch_fake, azurite, tmp_path):
    fake, _ = batch_fake
    keys = tmp_path / "curve"
    keys.mkdir()
    zmq.auth.create_certificates(keys, "broker")
    url = f"zmq://engine:{ZMQ_PASSWORD}@10.0.0.10:5555"
    pool = make_pool(spec=SPEC, engine_transport_url=url, curve_keys_dir=keys)
    job = _run_lifecycle(pool)
    engine_public, engine_secret = zmq.auth.load_certificate(keys / "engine.key_secret")
    secrets_given = [ZMQ_PASSWORD, engine_secret.decode(), _storage_key(azurite), DEFAULT_KEY]
    _scan(fake, secrets_given, allow_log_sas=True)
    # generated once, 0600, and staged with the broker's public key
    assert stat.S_IMODE((keys / "engine.key_secret").stat().st_mode) == 0o600
    assert _staged(pool, "engine.key_secret") == (keys / "engine.key_secret").read_bytes()
    assert _staged(pool, "broker.key") == (keys / "broker.key").read_bytes()
    assert _staged(pool, "transport").decode() == url
    command = _engine_tasks(fake, job)[0]["commandLine"]
    assert "--curve-server-key" in command and "--curve-secret-key-file" in command
    assert engine_public.decode() not in command


def test_curve_keys_dir_without_the_broker_key_is_refused(make_pool, tmp_path):
    with pytest.raises(OrchestratorError, match=r"broker\.key"):
        make_pool(curve_keys_dir=tmp_path)


def test_curve_keys_dir_with_a_servicebus_transport_is_refused(make_pool, tmp_path):
    zmq.auth.create_certificates(tmp_path, "broker")
    with pytest.raises(OrchestratorError, match="zmq://"):
        make_pool(engine_transport_url=SB_URL, curve_keys_dir=tmp_path)


# ------------------------------------------------------------ how engine tasks get it


def test_engine_tasks_download_their_credentials_folder(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool(spec=SPEC, engine_transport_url=SB_URL).create()
    job = pool.start_engines()
    for task in _engine_tasks(fake, job):
        assert task["resourceFiles"] == [
            {
                "autoStorageContainerName": pool.staging.container,
                "blobPrefix": "engine-credentials/",
            }
        ]
        # the queue settings are still there, and nothing else
        names = {e["name"] for e in task["environmentSettings"]}
        assert names == {"RTBATCH_LOCK_DURATION", "RTBATCH_MAX_DELIVERY_COUNT"}
        assert '--transport-file "$creds/transport"' in task["commandLine"]
    prep = fake.jobs[job]["jobPreparationTask"]
    assert {r["blobPrefix"] for r in prep["resourceFiles"]} == {"tasks/", "inputs/"}


def test_engine_identity_gives_nodes_no_secret(make_pool, batch_fake, azurite):
    fake, _ = batch_fake
    pool = make_pool(
        spec=SPEC,
        engine_transport_url=SB_URL,
        engine_identity=IDENTITY,
        engine_identity_client_id="11111111-2222-3333-4444-555555555555",
    ).create()
    job = pool.start_engines()
    assert _staged(pool, "transport") == b"servicebus://rtbatch-test.servicebus.windows.net"
    for task in _engine_tasks(fake, job):
        env = {e["name"]: e["value"] for e in task["environmentSettings"]}
        assert env["AZURE_CLIENT_ID"] == "11111111-2222-3333-4444-555555555555"
    _scan(fake, [SB_KEY, SB_URL, _storage_key(azurite), DEFAULT_KEY], allow_log_sas=True)


def test_engine_identity_without_client_id_is_refused(make_pool):
    with pytest.raises(OrchestratorError, match="engine_identity_client_id"):
        make_pool(engine_transport_url=SB_URL, engine_identity=IDENTITY)


def test_engine_identity_on_zmq_is_refused(make_pool):
    with pytest.raises(OrchestratorError, match="Service Bus"):
        make_pool(engine_identity=IDENTITY, engine_identity_client_id="c")


# ------------------------------------------------------------------------- renewal


def test_renew_restages_a_fresh_token_and_restarts_running_engines(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool(
        spec=PoolSpec(dedicated_nodes=1, engines_per_node=2),
        engine_transport_url=SB_URL,
        engine_token_lifetime=timedelta(hours=10),
    ).create()
    job = pool.start_engines()
    pool.wait_ready()
    first = sas_token_expiry(_staged(pool, "transport").decode())
    assert not pool.renew_engine_credentials(within=timedelta(hours=1))  # not due: nothing
    assert sorted(fake.tasks[job]) == ["engine-0000-r0", "engine-0001-r0"]
    pool.engine_token_lifetime = timedelta(hours=20)
    assert pool.renew_engine_credentials(within=timedelta(hours=11))
    second = sas_token_expiry(_staged(pool, "transport").decode())
    assert first is not None and second is not None and second > first + timedelta(hours=9)
    # the engines that ran were replaced by new tasks, which download the new file
    assert sorted(fake.tasks[job]) == ["engine-0000-r1", "engine-0001-r1"]


def test_autoscale_round_renews_a_token_close_to_expiry(make_pool, batch_fake):
    from realtime_batch.transport.base import QueueCounts

    fake, _ = batch_fake
    pool = make_pool(
        spec=PoolSpec(dedicated_nodes=1, engines_per_node=2),
        engine_transport_url=SB_URL,
        engine_token_lifetime=timedelta(hours=2),
        engine_token_renew_before=timedelta(hours=3),
    ).create()
    job = pool.start_engines()
    pool.wait_ready()
    pool.autoscale(1, 1, rounds=1, interval=0.01, counts=lambda: QueueCounts(0, 0))
    assert sorted(fake.tasks[job]) == ["engine-0000-r1", "engine-0001-r1"]


def test_renew_on_a_zmq_pool_without_a_token_does_nothing(make_pool, batch_fake):
    pool = make_pool(engine_transport_url=ENGINE_URL).create()
    pool.start_engines()
    assert not pool.renew_engine_credentials()


def test_renew_credentials_command_reads_the_config(batch_fake, azurite, files, tmp_path):
    from batch_fake import DEFAULT_ACCOUNT
    from click.testing import CliRunner

    from realtime_batch.cli import main

    fake, url = batch_fake
    env = {
        "RTBATCH_CONFIG": str(tmp_path / "rtbatch.toml"),
        "RTBATCH_POOL_BACKEND": "azure-batch",
        "RTBATCH_POOL_ID": "renewpool",
        "RTBATCH_POOL_TASK_FILES": str(files / "hello.py"),
        "RTBATCH_BATCH_ACCOUNT_URL": url,
        "RTBATCH_BATCH_ACCOUNT_NAME": DEFAULT_ACCOUNT,
        "RTBATCH_BATCH_ACCOUNT_KEY": DEFAULT_KEY,
        "RTBATCH_BATCH_WHEEL": str(files / "realtime_batch-0.1.0-py3-none-any.whl"),
        "RTBATCH_BATCH_WHEELHOUSE": str(files / "wheelhouse"),
        "RTBATCH_BATCH_POLL_INTERVAL": "0.01",
        "RTBATCH_BATCH_DRAIN_TIMEOUT": "0.2",
        "RTBATCH_STORAGE_CONNECTION_STRING": azurite,
        "RTBATCH_TRANSPORT_URL": "zmq://127.0.0.1:5555",
        "RTBATCH_TRANSPORT_ENGINE_URL": SB_URL,
        "RTBATCH_BATCH_ENGINE_TOKEN_DAYS": "0.5",
        "RTBATCH_BATCH_ENGINE_TOKEN_RENEW_HOURS": "2",
    }

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), env=env)
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output

    try:
        run("pool", "create", "--nodes", "1", "--engines-per-node", "2")
        [job] = run("job", "list").split()
        assert "not due, left alone" in run("pool", "renew-credentials", "--if-due")
        assert sorted(fake.tasks[job]) == ["engine-0000-r0", "engine-0001-r0"]
        out = run("pool", "renew-credentials")
        assert "engine credentials renewed; the engines' token is valid until" in out
        assert sorted(fake.tasks[job]) == ["engine-0000-r1", "engine-0001-r1"]
        _scan(fake, [SB_KEY, SB_URL, _storage_key(azurite), DEFAULT_KEY], allow_log_sas=True)
    finally:
        service = BlobServiceClient.from_connection_string(azurite)
        for name in ("rtbatch-renewpool", "rtbatch-renewpool-logs"):
            if service.get_container_client(name).exists():
                service.delete_container(name)
