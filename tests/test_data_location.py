"""Where a worker says it keeps app data, which decides whether an app may move: a
PostgreSQL server on loopback is a different server on every machine (and the same one
however this machine spells it), any other host is compared as configured."""

from __future__ import annotations

import pytest

import nocosup.provisioning as provisioning
from nocosup.provisioning import data_location, machine_local, server_location


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.2",
        "::1",
        "[::1]",
        "localhost",
        "LOCALHOST.",
        "localhost.localdomain",
        "db.localhost",
        "/var/run/postgresql",
        "0.0.0.0",
        "::",
    ],
)
def test_loopback_and_sockets_are_machine_local(host: str) -> None:
    assert machine_local(host)


@pytest.mark.parametrize(
    "host", ["db.example.com", "10.0.0.5", "postgres", "::2", "localhost.example.com", "fe80::1"]
)
def test_other_hosts_are_not(host: str) -> None:
    assert not machine_local(host)


def _on(machine: str, monkeypatch: pytest.MonkeyPatch, host: str) -> str:
    monkeypatch.setattr(provisioning.socket, "gethostname", lambda: machine)
    return server_location(host, 5432, "nocosup")


def test_loopback_servers_of_two_machines_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    a = _on("worker-a", monkeypatch, "127.0.0.1")
    b = _on("worker-b", monkeypatch, "127.0.0.1")
    assert a != b
    assert a == "postgresql://localhost:5432/nocosup on worker-a"
    # the same machine, spelled two ways: the same server
    assert _on("worker-a", monkeypatch, "localhost") == a
    # a shared server by name: the same wherever it is configured so
    assert _on("worker-a", monkeypatch, "db.example.com") == _on(
        "worker-b", monkeypatch, "db.example.com"
    )
    assert (
        _on("worker-a", monkeypatch, "db.example.com") == "postgresql://db.example.com:5432/nocosup"
    )


def test_data_location_reads_the_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    described = {"dialect": "postgres", "shared": {"postgres": _on("w", monkeypatch, "::1")}}
    assert data_location({}, described) == "postgresql://localhost:5432/nocosup on w"
    assert data_location({"provisioner": "sqlite"}, described) is None
    assert data_location({}, None) is None
