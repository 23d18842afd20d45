"""rtbatch.toml, environment overrides, credentials.json, redaction and the config CLI."""

from __future__ import annotations

import json
import stat

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from click.testing import CliRunner

from realtime_batch.cli import main
from realtime_batch.config import (
    Config,
    ConfigError,
    batch_credential,
    redact,
    update_config_file,
)

SB = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=client;SharedAccessKey=SBSECRET="
STORAGE = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=STSECRET==;EndpointSuffix=x"


@pytest.fixture
def creds(tmp_path):
    path = tmp_path / "credentials.json"
    path.write_text(
        json.dumps(
            {
                "BATCH_ACCOUNT_NAME": "acct",
                "BATCH_ACCOUNT_KEY": "BATCHSECRET",
                "BATCH_ACCOUNT_URL": "https://acct.westeurope.batch.azure.com",
                "STORAGE_CONNECTION_STRING": STORAGE,
                "SERVICEBUS_CONNECTION_STRING": SB,
                "SOMETHING_ELSE": "ignored",
            }
        )
    )
    return path


def test_defaults_are_the_local_embedded_setup(tmp_path):
    cfg = Config.load(tmp_path / "missing.toml", env={})
    assert cfg["pool.backend"] == "local"
    assert cfg["transport.url"].startswith("zmq://127.0.0.1")


def test_precedence_credentials_file_toml_env(tmp_path, creds):
    toml = tmp_path / "rtbatch.toml"
    toml.write_text(
        f'[pool]\nbackend = "azure-batch"\n[azure]\ncredentials_file = "{creds.name}"\n'
        '[batch]\naccount_name = "fromfile"\nengines_per_node = 4\n'
    )
    env = {"RTBATCH_BATCH_ENGINES_PER_NODE": "8", "RTBATCH_TRANSPORT": "zmq://10.0.0.4:5555"}
    cfg = Config.load(toml, env=env)
    assert cfg["batch.account_key"] == "BATCHSECRET"  # credentials.json
    assert cfg["storage.connection_string"] == STORAGE
    assert cfg["batch.account_name"] == "fromfile"  # toml beats credentials.json
    assert cfg["batch.engines_per_node"] == 8  # env beats toml, converted to int
    assert cfg["transport.url"] == "zmq://10.0.0.4:5555"  # short alias beats credentials
    assert cfg.sources["batch.account_key"] == "credentials:credentials.json"
    assert cfg.sources["batch.engines_per_node"] == "env:RTBATCH_BATCH_ENGINES_PER_NODE"


def test_unknown_names_and_bad_values_are_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pool]\nbackendd = 'local'\n")
    with pytest.raises(ConfigError, match=r"pool\.backendd"):
        Config.load(bad, env={})
    with pytest.raises(ConfigError, match="int"):
        Config.load(tmp_path / "none.toml", env={"RTBATCH_POOL_ENGINES": "many"})


def test_redaction_in_repr_and_show(tmp_path, creds):
    cfg = Config.load(tmp_path / "none.toml", env={"RTBATCH_CREDENTIALS": str(creds)})
    text = repr(cfg) + cfg.to_toml(redacted=True)
    for secret in ("BATCHSECRET", "SBSECRET", "STSECRET"):
        assert secret not in text
    assert "sb://ns.servicebus.windows.net" in text  # the useful part stays
    assert redact("transport.url", "zmq://h:1") == "zmq://h:1"
    assert "sig=***" in redact("x.url", "https://a/b?sv=1&sig=abc%3D&sp=r")


def test_key_or_default_azure_credential(tmp_path, creds):
    with_key = Config.load(tmp_path / "none.toml", env={"RTBATCH_CREDENTIALS": str(creds)})
    assert isinstance(batch_credential(with_key), AzureNamedKeyCredential)
    from azure.identity import DefaultAzureCredential

    keyless = Config({"batch.account_url": "https://acct.westeurope.batch.azure.com"})
    assert isinstance(batch_credential(keyless), DefaultAzureCredential)


def test_update_file_keeps_other_settings_and_is_private(tmp_path):
    path = tmp_path / "rtbatch.toml"
    update_config_file(path, {"pool.backend": "azure-batch"})
    update_config_file(path, {"transport.url": SB})
    cfg = Config.load(path, env={})
    assert cfg["pool.backend"] == "azure-batch" and cfg["transport.url"] == SB
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cli_init_show_set(tmp_path, creds):
    runner = CliRunner()
    path = tmp_path / "rtbatch.toml"
    env = {"RTBATCH_CONFIG": str(path)}
    result = runner.invoke(
        main, ["config", "init", "--backend", "azure-batch", "--credentials", str(creds)], env=env
    )
    assert result.exit_code == 0, result.output
    again = runner.invoke(main, ["config", "init"], env=env)
    assert again.exit_code != 0 and "--force" in again.output
    result = runner.invoke(main, ["config", "set", "batch.vm_size", "Standard_F4s_v2"], env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["config", "set", "batch.nope", "1"], env=env)
    assert result.exit_code != 0 and "unknown setting" in result.output
    shown = runner.invoke(main, ["config", "show", "--all"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "Standard_F4s_v2" in shown.output and "azure-batch" in shown.output
    for secret in ("BATCHSECRET", "SBSECRET", "STSECRET"):
        assert secret not in shown.output
    assert "BATCHSECRET" not in path.read_text()  # referenced, not copied
    forced = runner.invoke(main, ["config", "init", "--force"], env=env)
    assert forced.exit_code == 0 and Config.load(path, env={})["pool.backend"] == "local"
