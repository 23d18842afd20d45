"""Environment overrides: a misspelt RTBATCH_<SECTION>_<KEY> is an error, not ignored."""

from __future__ import annotations

import pytest

from realtime_batch.config import Config, ConfigError


def test_misspelt_setting_in_the_environment_is_an_error_naming_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"RTBATCH_POOL_ENGINESS.*RTBATCH_POOL_ENGINES"):
        Config.load(tmp_path / "none.toml", env={"RTBATCH_POOL_ENGINESS": "8"})


def test_settings_aliases_and_unrelated_variables_still_load(tmp_path):
    env = {
        "RTBATCH_POOL_ENGINES": "8",
        "RTBATCH_TRANSPORT": "memory://x",
        "RTBATCH_LOG_LEVEL": "DEBUG",  # not a config section: someone else's variable
        "RTBATCH_ENGINE_TRANSPORT": "zmq://h:1",  # the Azure job's, not an [engine] setting
        "PATH": "/bin",
    }
    config = Config.load(tmp_path / "none.toml", env=env)
    assert config["pool.engines"] == 8
    assert config["transport.url"] == "memory://x"
