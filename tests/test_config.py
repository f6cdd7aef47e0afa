"""Settings: defaults, and a message naming the variable for every bad value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nocosup.config import VARIABLES, Settings, Variable
from nocosup.errors import ConfigError


def test_embedded_defaults() -> None:
    s = Settings.from_env({})
    assert (s.mode, s.discovery_adapter, s.process_adapter, s.command_adapter) == (
        "supervisor",
        "local",
        "local",
        "local",
    )
    assert s.db_dialect == "sqlite"
    assert s.environment_name == "local"
    assert s.storage_dir == Path("./storage")
    assert s.boot_wait == 10.0
    assert s.redis_prefix == "nocosup"


def _without_instance_id(settings: Settings) -> Settings:
    return dataclasses.replace(settings, instance_id="-")


def test_settings_defaults_are_the_variables_defaults() -> None:
    """One place for defaults: Settings() is the parse of an empty environment."""
    assert _without_instance_id(Settings()) == _without_instance_id(Settings.from_env({}))
    assert Settings().instance_id != Settings().instance_id  # random per process
    assert Settings(storage_dir=Path("/x"), boot_wait=1.0).storage_dir == Path("/x")


@pytest.mark.parametrize(
    "variable", [v for v in VARIABLES if v.default is not None], ids=lambda v: v.name
)
def test_every_variable_default_parses_to_the_settings_default(variable: Variable) -> None:
    settings = Settings.from_env({variable.name: variable.default or ""})
    assert _without_instance_id(settings) == _without_instance_id(Settings())


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"APP_MODE": "boss"}, "APP_MODE"),
        ({"APP_DISCOVERY_ADAPTER": "dns"}, "APP_DISCOVERY_ADAPTER"),
        ({"APP_PROCESS_ADAPTER": "k8s"}, "APP_PROCESS_ADAPTER"),
        ({"APP_COMMAND_ADAPTER": "kafka"}, "APP_COMMAND_ADAPTER"),
        ({"APP_COMMAND_ADPATER": "kafka"}, "APP_COMMAND_ADPATER"),
        ({"DB_DIALECT": "mysql"}, "DB_DIALECT"),
        ({"DB_PORT": "http"}, "DB_PORT"),
        ({"DB_PORT": "70000"}, "DB_PORT"),
        ({"DB_DATABASE": "x" * 30}, "DB_DATABASE"),
        ({"DB_DATABASE": "bad;name"}, "DB_DATABASE"),
        ({"NOCOSUP_BOOT_WAIT": "-1"}, "NOCOSUP_BOOT_WAIT"),
        ({"NOCOSUP_BOOT_WAIT": "soon"}, "NOCOSUP_BOOT_WAIT"),
        ({"NOCOSUP_APP_FACTORY": "not a callable"}, "NOCOSUP_APP_FACTORY"),
        ({"NOCOSUP_REDIS_PREFIX": "has space"}, "NOCOSUP_REDIS_PREFIX"),
        ({"ENVIRONMENT_NAME": "bad name"}, "ENVIRONMENT_NAME"),
        ({"ENVIRONMENT_NAME": "nl2\nx"}, "ENVIRONMENT_NAME"),
        ({"NOCOSUP_INSTANCE_ID": "i1\nx"}, "NOCOSUP_INSTANCE_ID"),
        ({"ENVIRONMENT_URL": "ftp://x"}, "ENVIRONMENT_URL"),
        ({"APP_SUPERVISOR_REDIS_URL": "localhost:6379"}, "APP_SUPERVISOR_REDIS_URL"),
        ({"APP_MODE": "worker"}, "APP_DISCOVERY_ADAPTER"),
        ({"APP_PROCESS_ADAPTER": "remote"}, "APP_DISCOVERY_ADAPTER"),
        ({"APP_DISCOVERY_ADAPTER": "remote"}, "APP_SUPERVISOR_REDIS_URL"),
        ({"APP_COMMAND_ADAPTER": "redis"}, "APP_COMMAND_REDIS_URL"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(variable), str(info.value)


def test_values_are_trimmed_before_their_pattern_is_checked() -> None:
    # a trailing newline (an env file's) is trimmed, never kept in the value; the
    # patterns are matched whole (fullmatch), so nothing after a newline slips through
    s = Settings.from_env({"ENVIRONMENT_NAME": "nl2\n", "NOCOSUP_REDIS_PREFIX": "p\n"})
    assert (s.environment_name, s.redis_prefix) == ("nl2", "p")


def test_choice_errors_list_allowed_values() -> None:
    with pytest.raises(ConfigError, match="supervisor, worker; got 'boss'"):
        Settings.from_env({"APP_MODE": "boss"})


def test_misspelled_command_adapter_is_accepted() -> None:
    s = Settings.from_env({"APP_COMMAND_ADPATER": "redis", "APP_COMMAND_REDIS_URL": "redis://x"})
    assert s.command_adapter == "redis"
    # the correct spelling wins when both are set
    s = Settings.from_env({"APP_COMMAND_ADAPTER": "local", "APP_COMMAND_ADPATER": "redis"})
    assert s.command_adapter == "local"


def test_proxy_url_defaults_to_environment_url() -> None:
    s = Settings.from_env({"ENVIRONMENT_URL": "http://w:1/"})
    assert s.proxy_url == "http://w:1"
    s = Settings.from_env({"ENVIRONMENT_URL": "http://w:1", "ENVIRONMENT_PROXY_URL": "http://i:2"})
    assert s.proxy_url == "http://i:2"


def test_every_variable_has_help() -> None:
    names = [v.name for v in VARIABLES]
    assert len(names) == len(set(names))
    assert all(v.help for v in VARIABLES)
