"""The pieces of the signed control plane on their own: the envelope, the allow-list of
upstreams, URL masking, the settings that configure them, and tenant-database derivation.
The same behaviour against real processes is in test_cluster_security.py."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from unittest import mock

import pytest

from nocosup.config import Settings, mask_url
from nocosup.errors import ConfigError
from nocosup.provisioning import (
    BUILTIN_PROVISIONERS,
    ForeignDatabase,
    TenantDatabases,
)
from nocosup.signing import BadSignature, RateLimitedLog, Signer
from nocosup.upstreams import UpstreamPolicy

SECRET = "s" * 32


# --- the envelope ----------------------------------------------------------------------


def test_a_signed_message_verifies_and_loses_its_envelope() -> None:
    fields = {"id": "abc", "action": "ping", "app": "x"}
    signed = Signer(SECRET, "sup-1").sign("command", "env_a", fields)
    assert set(signed) == {*fields, "sig", "sig_at", "sig_by"} and signed["sig_by"] == "sup-1"
    assert Signer(SECRET, "w").verify("command", "env_a", signed, 60) == fields


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f.update(app="y"), "bad signature"),
        (lambda f: f.update(extra="1"), "bad signature"),
        (lambda f: f.pop("app"), "bad signature"),
        (lambda f: f.update(sig_by="someone-else"), "bad signature"),
        (lambda f: f.update(sig_at=f"{time.time():.6f}"), "bad signature"),
        (lambda f: f.update(sig="0" * 64), "bad signature"),
        (lambda f: f.pop("sig"), "unsigned"),
        (lambda f: f.update(sig=""), "unsigned"),
    ],
)
def test_a_changed_message_does_not_verify(change: object, reason: str) -> None:
    signed = Signer(SECRET, "sup-1").sign("command", "env_a", {"id": "abc", "app": "x"})
    change(signed)  # type: ignore[operator]
    with pytest.raises(BadSignature, match=reason):
        Signer(SECRET, "w").verify("command", "env_a", signed, 60)


def test_kind_context_and_key_are_part_of_the_signature() -> None:
    signed = Signer(SECRET, "a").sign("command", "env_a", {"id": "1"})
    for kind, context, secret in (
        ("reply", "env_a", SECRET),
        ("command", "env_b", SECRET),
        ("command", "env_a", "t" * 32),
    ):
        with pytest.raises(BadSignature, match="bad signature"):
            Signer(secret, "b").verify(kind, context, signed, 60)


def test_age_and_future_are_bounded() -> None:
    signer = Signer(SECRET, "a")
    with mock.patch("nocosup.signing.time.time", return_value=time.time() - 100):
        old = signer.sign("event", "", {"type": "x"})
    with pytest.raises(BadSignature, match=r"stale: signed 10\ds ago \(window 30s\)"):
        signer.verify("event", "", old, 30)
    assert signer.verify("event", "", old, None) == {"type": "x"}  # no age limit
    with mock.patch("nocosup.signing.time.time", return_value=time.time() + 3600):
        future = signer.sign("event", "", {"type": "x"})
    with pytest.raises(BadSignature, match="in the future"):
        signer.verify("event", "", future, None)
    nan = {**old, "sig_at": "nan"}
    with pytest.raises(BadSignature):
        signer.verify("event", "", nan, None)


def test_json_values_keep_their_types() -> None:
    value = {"instance": "i", "pid": 12, "url": None, "nested": {"b": [1, 2], "a": "ü"}}
    signer = Signer(SECRET, "i")
    text = signer.sign_json("heartbeat", "env/i", value)
    parsed = json.loads(text)
    assert signer.verify_json("heartbeat", "env/i", parsed, 30) == value
    parsed["pid"] = 13
    with pytest.raises(BadSignature):
        signer.verify_json("heartbeat", "env/i", parsed, 30)
    with pytest.raises(BadSignature, match="unsigned"):
        signer.verify_json("heartbeat", "env/i", value, 30)


def test_without_a_secret_everything_passes_and_nothing_is_added() -> None:
    signer = Signer(None, "i")
    assert not signer.enabled
    assert signer.sign("command", "e", {"a": "1"}) == {"a": "1"}
    assert signer.sign_json("status", "c", {"a": 1}) == json.dumps({"a": 1})
    # envelope fields someone else wrote are dropped, the rest kept
    assert signer.verify("command", "e", {"a": "1", "sig": "x"}, 1) == {"a": "1"}
    with pytest.raises(BadSignature, match="not a string"):
        signer.verify("command", "e", {"a": 1}, 1)


def test_a_flood_of_warnings_is_logged_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("test.flood"), every=3600)
    with caplog.at_level(logging.WARNING, "test.flood"):
        for i in range(1000):
            limited.warning("heartbeat", "forged %d", i)
        limited.warning("status", "other kind")
    assert [r.getMessage() for r in caplog.records] == ["forged 0", "other kind"]


# --- allowed upstreams -----------------------------------------------------------------


def policy(value: str) -> UpstreamPolicy:
    return UpstreamPolicy(Settings.from_env({"NOCOSUP_ALLOWED_UPSTREAMS": value}).allowed_upstreams)


@pytest.mark.parametrize(
    ("allowed", "url", "ok"),
    [
        ("10.0.0.0/8", "http://10.1.2.3:8000", True),
        ("10.0.0.0/8", "http://11.1.2.3:8000", False),
        ("10.0.0.0/8", "http://ten.example:80", False),  # names are not resolved
        ("127.0.0.1", "http://127.0.0.1:5000", True),
        ("127.0.0.1:5000", "http://127.0.0.1:5001", False),
        ("worker_a:80", "http://worker_a", True),
        ("worker_a:80", "https://worker_a", False),
        ("Worker-A.example", "http://worker-a.EXAMPLE:9/x", True),
        ("worker-a.example", "http://evil.worker-a.example", False),
        ("[fd00::1]:8000", "http://[fd00::1]:8000", True),
        ("fd00::/8", "http://[fd12::5]/", True),
        ("fd00::/8, 10.0.0.1", "http://10.0.0.1", True),
    ],
)
def test_allowed_upstreams_match_hosts_networks_and_ports(allowed: str, url: str, ok: bool) -> None:
    why = policy(allowed).refusal(url)
    assert (why is None) is ok, why
    if not ok:
        assert why is not None and "NOCOSUP_ALLOWED_UPSTREAMS" in why


def test_no_allowed_upstreams_allows_any() -> None:
    assert not policy("").restricted and policy("").refusal("http://anything:1") is None


# --- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NOCOSUP_CLUSTER_SECRET": "short"}, "NOCOSUP_CLUSTER_SECRET must be at least 32"),
        ({"NOCOSUP_ALLOWED_UPSTREAMS": "10.0.0.0/8,bad host"}, "'bad host'"),
        ({"NOCOSUP_ALLOWED_UPSTREAMS": "host:99999"}, "'host:99999'"),
        ({"NOCOSUP_ALLOWED_UPSTREAMS": "http://x"}, "'http://x'"),
        ({"NOCOSUP_TENANT_DB_PREFIX": "bad-name"}, "NOCOSUP_TENANT_DB_PREFIX must be"),
        ({"NOCOSUP_TENANT_DB_PREFIX": "x" * 23}, "NOCOSUP_TENANT_DB_PREFIX must be at most"),
        ({"NOCOSUP_REDIS_CA_FILE": "/nonexistent/ca.pem"}, "NOCOSUP_REDIS_CA_FILE must name"),
    ],
)
def test_bad_cluster_settings_name_the_variable_and_the_value(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value), str(info.value)


def test_a_url_with_a_password_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"APP_SUPERVISOR_REDIS_URL": "tcp://user:hunter2hunter2@redis:6379"})
    assert "hunter2" not in str(info.value) and "user:***@redis" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://:pw@host/0?ssl_ca_certs=/a", "rediss://:***@host/0?ssl_ca_certs=/a"),
        ("redis://user@host", "redis://user@host"),
        ("redis://host:6379", "redis://host:6379"),
        ("http://a:b@c/d@e", "http://a:***@c/d@e"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


# --- tenant databases are derived ------------------------------------------------------


def databases(tmp_path: Path, **env: str) -> TenantDatabases:
    settings = Settings.from_env({"NOCOSUP_STORAGE_DIR": str(tmp_path), **env})
    return TenantDatabases(settings, [p(settings) for p in BUILTIN_PROVISIONERS])


def test_a_worker_derives_the_supervisors_database(tmp_path: Path) -> None:
    supervisor = databases(tmp_path, DB_DATABASE="sup")
    stored = supervisor.spec_for("crm", None, None).to_json()
    assert stored["name"] == "sup_app_crm"
    worker = databases(tmp_path, DB_DATABASE="worker_a", NOCOSUP_TENANT_DB_PREFIX="sup")
    assert worker.derive("crm", {"dbConnType": "new_database"}, stored).name == "sup_app_crm"
    # without the prefix, the worker's own DB_DATABASE disagrees: refused, not followed
    with pytest.raises(ForeignDatabase, match="NOCOSUP_TENANT_DB_PREFIX"):
        databases(tmp_path, DB_DATABASE="worker_a").derive("crm", {}, stored)


@pytest.mark.parametrize(
    "stored",
    [
        {"connType": "new_database", "name": "sup", "schema": None},  # the registry
        {"connType": "new_database", "name": "sup_other", "schema": None},  # another app
        {"connType": "new_schema", "name": "sup", "schema": "public"},
        {"connType": "new_database", "name": "sup_crm", "schema": None, "provisioner": "x"},
    ],
)
def test_a_record_naming_another_database_is_refused(tmp_path: Path, stored: dict) -> None:
    with pytest.raises(ForeignDatabase):
        databases(tmp_path, DB_DATABASE="sup").derive("crm", {}, stored)


def test_schema_mode_is_derived_too(tmp_path: Path) -> None:
    db = databases(tmp_path, DB_DIALECT="postgres", DB_DATABASE="sup")
    stored = {"connType": "new_schema", "name": "sup", "schema": "crm"}
    assert db.derive("crm", {"dbConnType": "new_schema"}, stored).schema == "crm"
    with pytest.raises(ForeignDatabase):
        db.derive("crm", {"dbConnType": "new_schema"}, {**stored, "schema": "other"})
    with pytest.raises(ForeignDatabase, match="dbConnType"):
        db.derive("crm", {"dbConnType": "nope"}, stored)


def test_an_app_created_before_the_app_infix_keeps_its_database(tmp_path: Path) -> None:
    """Records written before tenant names took "_app_" name {prefix}_{app} (schema {app}):
    workers accept exactly that form as well."""
    worker = databases(tmp_path, DB_DATABASE="worker_a", NOCOSUP_TENANT_DB_PREFIX="sup")
    old = {"connType": "new_database", "name": "sup_crm", "schema": None}
    assert worker.derive("crm", {}, old).name == "sup_crm"
    on_pg = databases(
        tmp_path, DB_DIALECT="postgres", DB_DATABASE="worker_a", NOCOSUP_TENANT_DB_PREFIX="sup"
    )
    old_schema = {"connType": "new_schema", "name": "sup", "schema": "crm"}
    assert on_pg.derive("crm", {"dbConnType": "new_schema"}, old_schema).schema == "crm"
    # the old form of another app is still another app's database
    with pytest.raises(ForeignDatabase):
        worker.derive("crm", {}, {"connType": "new_database", "name": "sup_shop", "schema": None})
