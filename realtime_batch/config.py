"""Configuration: ``rtbatch.toml`` + environment variables + the seed's ``credentials.json``.

Precedence, lowest first: built-in defaults, the credentials file named by
``[azure] credentials_file`` (or ``RTBATCH_CREDENTIALS``), ``rtbatch.toml``
(``RTBATCH_CONFIG`` or ``./rtbatch.toml``), then ``RTBATCH_<SECTION>_<KEY>``
environment variables (``RTBATCH_TRANSPORT`` is short for ``RTBATCH_TRANSPORT_URL``).

Moving from the emulator to Azure is two settings::

    [pool]
    backend = "azure-batch"      # was "local"
    [transport]
    url = "Endpoint=sb://....servicebus.windows.net/;SharedAccessKeyName=client;..."

Secrets (keys, connection strings, SAS signatures) are redacted in every
``repr`` and in ``rtbatch config show``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CREDENTIALS_KEYS",
    "DEFAULTS",
    "OTHER_VARIABLES",
    "SECRET_KEYS",
    "Config",
    "ConfigError",
    "config_path",
    "contains_secret",
    "redact",
]

REDACTED = "***"

#: section -> key -> default (the schema: types come from the defaults)
DEFAULTS: dict[str, dict[str, Any]] = {
    "pool": {
        "backend": "local",  # "local" | "azure-batch"
        "id": "rtbatch",
        "engines": 2,  # local pool: engine processes
        "task_files": [],
        "input_files": [],
    },
    "transport": {
        "url": "zmq://127.0.0.1:0",  # port 0: the local pool picks a free port
        "engine_url": "",  # what engines get (Listen on tasks, Send on results)
        "curve_keys_dir": "",  # zmq:// on Azure: broker.key (+ engine pair, made if missing)
        "queue": "tasks",
        # the task queue's settings (rtbatch servicebus provision): engines must know them
        "lock_duration": 30.0,
        "max_delivery_count": 10,
    },
    "storage": {
        "connection_string": "",
        "account_url": "",  # https://ACCOUNT.blob.core.windows.net (keyless)
        "container_prefix": "rtbatch",
        "sas_hours": 2.0,
    },
    "batch": {
        "account_name": "",
        "account_url": "",
        "account_key": "",  # empty: DefaultAzureCredential (keyless)
        "vm_size": "Standard_D2s_v5",
        "dedicated_nodes": 1,
        "spot_nodes": 0,
        "engines_per_node": 2,
        "image_publisher": "canonical",
        "image_offer": "ubuntu-24_04-lts",
        "image_sku": "server",
        "node_agent_sku": "batch.node.ubuntu 24.04",
        "subnet_id": "",
        "node_identity": "",  # empty: downloads signed by Batch from its auto-storage account
        "engine_identity": "",  # identity with Service Bus data roles: engines get no secret
        "engine_identity_client_id": "",  # its client id (engines sign in with it)
        "engine_token_days": 7.0,  # validity of the engines' Service Bus SAS token
        "engine_token_renew_hours": 24.0,  # renew (autoscale, renew-credentials --if-due)
        "autoscale_formula": "",
        "wheel": "",  # empty: built from the source tree
        "wheelhouse": "",  # empty: pip download of the wheel's dependencies for the nodes
        "poll_interval": 5.0,
        "drain_timeout": 30.0,  # seconds engines of leaving nodes get to stop
    },
    "azure": {
        "credentials_file": "",  # the seed's credentials.json
    },
    "engine": {  # local pool engines (rtbatch engine options)
        "allow_jvm_options": [],  # regexes of further JVM options jar tasks may pass
        "max_jvm_heap": "",  # largest -Xmx/-Xms a jar task may ask for; "": the node's memory
        "max_output": "16m",  # a task's print output / a jar's stdout and stderr, each
    },
}

SECRET_KEYS = frozenset(
    {
        "batch.account_key",
        "storage.connection_string",
        "transport.url",
        "transport.engine_url",
    }
)

#: the seed's credentials.json keys -> config keys
CREDENTIALS_KEYS: dict[str, str] = {
    "BATCH_ACCOUNT_NAME": "batch.account_name",
    "BATCH_ACCOUNT_KEY": "batch.account_key",
    "BATCH_ACCOUNT_URL": "batch.account_url",
    "STORAGE_CONNECTION_STRING": "storage.connection_string",
    "SERVICEBUS_CONNECTION_STRING": "transport.url",
}

_ENV_ALIASES = {"RTBATCH_TRANSPORT": "transport.url", "RTBATCH_BACKEND": "pool.backend"}
#: RTBATCH_* variables read elsewhere that look like settings but are not ones.
OTHER_VARIABLES: frozenset[str] = frozenset({"RTBATCH_ENGINE_TRANSPORT"})
# key=value pairs in connection strings and SAS query strings that are secret
_SECRET_PARTS = re.compile(
    r"((?:SharedAccessKey|AccountKey|SharedAccessSignature|sig|curve_secret_?key)=)([^;&\s]+)",
    re.IGNORECASE,
)
# the password of a URL (scheme://user:PASSWORD@host)
_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^/@:]*:)([^/@]+)(@)", re.IGNORECASE)


class ConfigError(ValueError):
    """A configuration file or value is invalid."""


def redact(key: str, value: Any) -> Any:
    """``value`` with its secret parts replaced by ``***``.

    Connection strings and URLs keep their non-secret parts (endpoint, key name) so
    that ``config show`` stays useful; bare keys are replaced whole.
    """
    if not isinstance(value, str) or not value:
        return value
    if contains_secret(value):
        value = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), value)
        return _SECRET_PARTS.sub(lambda m: m.group(1) + REDACTED, value)
    if key.endswith(("_key", ".key", "password", "secret")):
        return REDACTED
    return value


def contains_secret(value: str) -> bool:
    """True if ``value`` carries a secret: a key, a SAS signature or a URL's password."""
    return bool(_SECRET_PARTS.search(value) or _URL_PASSWORD.search(value))


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: ``path``, ``$RTBATCH_CONFIG`` or ``./rtbatch.toml``."""
    return Path(path or os.environ.get("RTBATCH_CONFIG") or "rtbatch.toml")


def _coerce(key: str, value: Any) -> Any:
    section, _, name = key.partition(".")
    default = DEFAULTS[section][name]
    if isinstance(value, str) and not isinstance(default, str):
        text = value.strip()
        try:
            if isinstance(default, bool):
                return text.lower() in ("1", "true", "yes", "on")
            if isinstance(default, int):
                return int(text)
            if isinstance(default, float):
                return float(text)
            if isinstance(default, list):
                return (
                    json.loads(text)
                    if text.startswith("[")
                    else [s.strip() for s in text.split(",") if s.strip()]
                )
        except ValueError as exc:
            raise ConfigError(f"{key}: cannot read {value!r} as {type(default).__name__}") from exc
    if not isinstance(value, type(default)) and not (
        isinstance(default, float) and isinstance(value, int)
    ):
        raise ConfigError(f"{key}: expected {type(default).__name__}, got {value!r}")
    return value


class Config:
    """Resolved settings, read as ``config["batch.vm_size"]`` or ``config.section("batch")``.

    Args:
        values: ``"section.key" -> value`` overrides on top of :data:`DEFAULTS`.
        sources: ``"section.key" -> where the value came from`` (for ``config show``).
    """

    def __init__(
        self, values: Mapping[str, Any] | None = None, sources: Mapping[str, str] | None = None
    ) -> None:
        self._values = {f"{s}.{k}": v for s, keys in DEFAULTS.items() for k, v in keys.items()}
        self.sources = dict.fromkeys(self._values, "default")
        for key, value in (values or {}).items():
            self.set(key, value, (sources or {}).get(key, "code"))

    # ----------------------------------------------------------------- access
    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            raise KeyError(f"unknown setting {key!r}; known: {', '.join(sorted(self._values))}")
        return self._values[key]

    def set(self, key: str, value: Any, source: str = "code") -> None:
        """Set ``section.key`` (strings are converted to the setting's type)."""
        if key not in self._values:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(self._values))}")
        self._values[key] = _coerce(key, value)
        self.sources[key] = source

    def section(self, name: str) -> dict[str, Any]:
        """The settings of one section as a dict."""
        return {k.split(".", 1)[1]: v for k, v in self._values.items() if k.startswith(name + ".")}

    def items(self, *, redacted: bool = True) -> list[tuple[str, Any, str]]:
        """``(key, value, source)`` for every setting, secrets redacted by default."""
        return [
            (k, redact(k, v) if redacted else v, self.sources[k]) for k, v in self._values.items()
        ]

    def to_toml(self, *, only_set: bool = True, redacted: bool = False) -> str:
        """TOML text of the settings (those not at their default when ``only_set``)."""
        doc: dict[str, dict[str, Any]] = {}
        for key, value, source in self.items(redacted=redacted):
            if only_set and source == "default":
                continue
            section, _, name = key.partition(".")
            doc.setdefault(section, {})[name] = value
        import tomli_w  # here: an engine reads its settings, it never writes them

        return tomli_w.dumps(doc)

    def __repr__(self) -> str:
        changed = {k: v for k, v, s in self.items() if s != "default"}
        return f"Config({changed!r})"

    @property
    def has_secrets(self) -> bool:
        """True if a secret setting holds a value (file should be private)."""
        return any(redact(k, self._values[k]) != self._values[k] for k in SECRET_KEYS)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Config:
        """Defaults < credentials file < rtbatch.toml < environment variables."""
        env = os.environ if env is None else env
        file = config_path(path if path is not None else env.get("RTBATCH_CONFIG"))
        config = cls()
        file_values = read_toml(file) if file.is_file() else {}
        creds = file_values.get("azure.credentials_file") or env.get("RTBATCH_CREDENTIALS", "")
        if creds:
            creds_path = (file.parent / creds) if not Path(creds).is_absolute() else Path(creds)
            for key, value in read_credentials(creds_path).items():
                config.set(key, value, f"credentials:{creds_path.name}")
        for key, value in file_values.items():
            config.set(key, value, f"file:{file.name}")
        for name, value in env.items():
            key = _env_setting(name, config._values)
            if key is not None:
                config.set(key, value, f"env:{name}")
        return config


def _env_setting(name: str, known: Mapping[str, Any]) -> str | None:
    """The setting an ``RTBATCH_*`` variable overrides, or None if it is not one.

    A variable that names a config section but no setting of it (a misspelt
    ``pool.engines``, say) is an error, like an unknown key in the file.

    Raises:
        ConfigError: a misspelt setting, with the closest known ones.
    """
    if name in _ENV_ALIASES:
        return _ENV_ALIASES[name]
    if not name.startswith("RTBATCH_") or name in OTHER_VARIABLES:
        return None
    section, _, rest = name[len("RTBATCH_") :].lower().partition("_")
    if section not in DEFAULTS:
        return None
    key = f"{section}.{rest}"
    if rest and key in known:
        return key
    spelt = [f"RTBATCH_{k.replace('.', '_').upper()}" for k in known if k.startswith(section + ".")]
    import difflib

    close = difflib.get_close_matches(name, spelt, n=3) or spelt
    raise ConfigError(
        f"unknown setting in the environment: {name}; did you mean {', '.join(close)}?"
    )


def read_toml(path: Path) -> dict[str, Any]:
    """Flatten a TOML file into ``section.key`` values, checking names."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    flat = {}
    for section, keys in data.items():
        if section not in DEFAULTS or not isinstance(keys, dict):
            raise ConfigError(f"{path}: unknown section [{section}]; known: {sorted(DEFAULTS)}")
        for name, value in keys.items():
            if name not in DEFAULTS[section]:
                raise ConfigError(f"{path}: unknown setting {section}.{name}")
            flat[f"{section}.{name}"] = value
    return flat


def read_credentials(path: Path) -> dict[str, str]:
    """The seed's ``credentials.json`` mapped to config keys (unknown keys ignored)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc}") from exc
    return {CREDENTIALS_KEYS[k]: str(v) for k, v in data.items() if k in CREDENTIALS_KEYS and v}


def write_config(config: Config, path: Path) -> None:
    """Write the non-default settings to ``path`` (mode 0600 when it holds secrets)."""
    text = config.to_toml(only_set=True)
    path.write_text(text)
    if config.has_secrets:
        path.chmod(0o600)


def update_config_file(path: Path, updates: Mapping[str, Any]) -> Config:
    """Set ``section.key`` values in the file at ``path`` only (env and credentials untouched)."""
    config = Config(read_toml(path) if path.is_file() else {})
    for key, value in updates.items():
        config.set(key, value, "file")
    write_config(config, path)
    return config


# ------------------------------------------------------------ Azure clients
def uses_key(config: Config) -> bool:
    """True when the Batch account key is configured; else DefaultAzureCredential is used."""
    return bool(config["batch.account_key"])


def batch_credential(config: Config) -> Any:
    """Shared key when configured, else ``DefaultAzureCredential`` (keyless, Entra ID)."""
    if uses_key(config):
        from azure.core.credentials import AzureNamedKeyCredential

        if not config["batch.account_name"]:
            raise ConfigError("batch.account_key is set but batch.account_name is empty")
        return AzureNamedKeyCredential(config["batch.account_name"], config["batch.account_key"])
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def batch_client(config: Config, **options: Any) -> Any:
    """An ``azure.batch.BatchClient`` for the configured account."""
    from azure.batch import BatchClient

    url = config["batch.account_url"]
    if not url:
        raise ConfigError("batch.account_url is not set (https://ACCOUNT.REGION.batch.azure.com)")
    if not url.startswith(("http://", "https://")):
        url = "https://" + url
    return BatchClient(endpoint=url, credential=batch_credential(config), **options)


def blob_service(config: Config) -> Any:
    """A ``BlobServiceClient``: connection string, or account URL + DefaultAzureCredential."""
    from azure.storage.blob import BlobServiceClient

    if config["storage.connection_string"]:
        return BlobServiceClient.from_connection_string(config["storage.connection_string"])
    if config["storage.account_url"]:
        from azure.identity import DefaultAzureCredential

        return BlobServiceClient(config["storage.account_url"], credential=DefaultAzureCredential())
    raise ConfigError("set storage.connection_string or storage.account_url (keyless)")
