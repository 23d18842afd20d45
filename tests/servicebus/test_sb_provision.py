"""``rtbatch servicebus provision``: argument handling, Config.json output, admin calls.

The administration client speaks HTTPS to the namespace's management endpoint, which
neither the stand-in nor the official emulator serve, so its calls are checked on a
recording fake here.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import types

import pytest
from azure.core.exceptions import ResourceNotFoundError
from click.testing import CliRunner

from realtime_batch.cli import main
from realtime_batch.transport import QueueOptions, QueueSettingsConflict, servicebus_admin


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["servicebus", "provision", *args], env=env)


class FakeAdmin:
    def __init__(self, existing: dict[str, types.SimpleNamespace] | None = None) -> None:
        self.queues = dict(existing or {})
        self.calls: list[tuple[str, str, dict]] = []

    def get_queue(self, name):
        if name not in self.queues:
            raise ResourceNotFoundError(f"no queue {name}")
        return self.queues[name]

    def create_queue(self, name, **settings):
        self.calls.append(("create", name, settings))
        self.queues[name] = types.SimpleNamespace(name=name, **settings)

    def update_queue(self, queue):
        self.calls.append(("update", queue.name, dict(vars(queue))))


@pytest.fixture
def fake_admin(monkeypatch):
    admin = FakeAdmin()
    targets = []

    @contextlib.contextmanager
    def fake_client(target, credential=None):
        targets.append(target)
        yield admin

    monkeypatch.setattr(servicebus_admin, "admin_client", fake_client)
    admin.targets = targets
    return admin


def test_print_config_is_the_emulator_config_json():
    result = run("--print-config", "--lock-duration", "45", "--max-delivery-count", "4")
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)
    [namespace] = config["UserConfig"]["Namespaces"]
    queues = {q["Name"]: q["Properties"] for q in namespace["Queues"]}
    assert queues["tasks"]["LockDuration"] == "PT45S"
    assert queues["tasks"]["MaxDeliveryCount"] == 4
    assert queues["tasks"]["RequiresSession"] is False
    assert queues["tasks"]["DeadLetteringOnMessageExpiration"] is True
    assert queues["results"]["RequiresSession"] is True
    assert queues["results"]["LockDuration"] == "PT1M"
    assert queues["control"]["RequiresSession"] is True


def test_iso_durations():
    assert servicebus_admin.iso_duration(30) == "PT30S"
    assert servicebus_admin.iso_duration(90) == "PT1M30S"
    assert servicebus_admin.iso_duration(3600) == "PT1H"
    assert servicebus_admin.iso_duration(0) == "PT0S"


def test_a_target_is_required_without_print_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no rtbatch.toml here
    result = run(env={"RTBATCH_SERVICEBUS": "", "RTBATCH_TRANSPORT": "zmq://127.0.0.1:0"})
    assert result.exit_code == 2
    assert "--namespace" in result.output


def test_queue_names_must_differ(fake_admin):
    result = run("--namespace", "contoso", "--task-queue", "same", "--results-queue", "same")
    assert result.exit_code == 2 and "differ" in result.output
    assert fake_admin.calls == []


def test_out_of_range_settings_are_refused(fake_admin):
    assert run("--namespace", "contoso", "--lock-duration", "600").exit_code == 2
    assert run("--namespace", "contoso", "--max-delivery-count", "0").exit_code == 2
    assert fake_admin.calls == []


def test_creates_the_task_queue_and_the_session_enabled_results_queue(fake_admin):
    result = run("--namespace", "contoso", "--lock-duration", "60", "--max-delivery-count", "5")
    assert result.exit_code == 0, result.output
    assert "created queue tasks" in result.output and "created queue results" in result.output
    assert fake_admin.targets == ["contoso"]
    calls = {name: settings for _, name, settings in fake_admin.calls}
    assert calls["tasks"]["lock_duration"] == datetime.timedelta(seconds=60)
    assert calls["tasks"]["max_delivery_count"] == 5
    assert calls["tasks"]["requires_session"] is False
    assert calls["tasks"]["dead_lettering_on_message_expiration"] is True
    assert calls["results"]["requires_session"] is True
    assert calls["control"]["requires_session"] is True
    assert calls["control"]["default_message_time_to_live"] == datetime.timedelta(hours=1)


def test_existing_queues_are_updated(fake_admin):
    assert run("--namespace", "contoso").exit_code == 0
    result = run("--namespace", "contoso", "--max-delivery-count", "7")
    assert result.exit_code == 0, result.output
    assert "updated queue tasks" in result.output
    kind, name, settings = fake_admin.calls[-2]
    assert (kind, name, settings["max_delivery_count"]) == ("update", "tasks", 7)


def test_sessions_cannot_be_switched_on_an_existing_queue(fake_admin):
    fake_admin.queues["results"] = types.SimpleNamespace(name="results", requires_session=False)
    result = run("--namespace", "contoso")
    assert result.exit_code == 1
    assert "requires_session" in result.output


def test_connection_string_from_the_environment(fake_admin):
    conn = "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=b"
    assert run(env={"RTBATCH_SERVICEBUS": conn}).exit_code == 0
    assert fake_admin.targets == [conn]


def test_falls_back_to_the_configured_transport_url(fake_admin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conn = "Endpoint=sb://y.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=b"
    assert run(env={"RTBATCH_SERVICEBUS": "", "RTBATCH_TRANSPORT": conn}).exit_code == 0
    assert fake_admin.targets == [conn]


def test_admin_client_is_built_for_both_kinds_of_target():
    conn = "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=b"
    with servicebus_admin.admin_client(conn) as admin:
        assert admin.fully_qualified_namespace == "x.servicebus.windows.net"
    with servicebus_admin.admin_client("servicebus://contoso", credential=object()) as admin:
        assert admin.fully_qualified_namespace == "contoso.servicebus.windows.net"


def test_print_config_spells_the_same_settings_as_provisioning(fake_admin):
    args = ("--lock-duration", "45", "--max-delivery-count", "4", "--ttl", "120")
    printed = run("--print-config", *args)
    assert printed.exit_code == 0, printed.output
    [namespace] = json.loads(printed.output)["UserConfig"]["Namespaces"]
    config = {q["Name"]: q["Properties"] for q in namespace["Queues"]}
    assert run("--namespace", "contoso", *args).exit_code == 0
    created = {name: settings for _, name, settings in fake_admin.calls}
    assert set(config) == set(created)
    for name, settings in created.items():
        ttl = settings.get("default_message_time_to_live", datetime.timedelta(hours=1))
        assert config[name]["DefaultMessageTimeToLive"] == servicebus_admin.iso_duration(
            ttl.total_seconds()
        )
        assert config[name]["RequiresSession"] == settings["requires_session"]
        assert config[name]["MaxDeliveryCount"] == settings["max_delivery_count"]
    assert config["tasks"]["DefaultMessageTimeToLive"] == "PT2M"  # --ttl was dropped


def test_print_config_refuses_equal_queue_names():
    result = run("--print-config", "--task-queue", "same", "--results-queue", "same")
    assert result.exit_code == 2 and "differ" in result.output


def test_the_transport_creates_queues_with_the_provisioning_settings():
    admin = FakeAdmin()
    options = QueueOptions(lock_duration=12, max_delivery_count=3)
    assert servicebus_admin.ensure_queue(admin, "mail", options, grouped=True) == "created"
    [(kind, name, settings)] = admin.calls
    assert (kind, name) == ("create", "mail")
    assert settings == servicebus_admin.queue_settings(12, 3, sessions=True)
    admin.queues["mail"] = types.SimpleNamespace(
        lock_duration=datetime.timedelta(seconds=12), max_delivery_count=3
    )
    assert servicebus_admin.ensure_queue(admin, "mail", options, grouped=True) == "exists"
    with pytest.raises(QueueSettingsConflict):
        servicebus_admin.ensure_queue(admin, "mail", QueueOptions(12, 9), grouped=True)
