"""What a lean-lane replay rests on (nocosup.leanlane.Replay): the gateway's stamp of its
choice of environment and the host's routing. A stale stamp would send a connection's
repeated request to where the app no longer is; these tests change each part it rests on."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

from nocosup.config import Settings
from nocosup.registry import AppRecord
from nocosup.remote import ProxyGateway


def online(url: str) -> dict[str, Any]:
    return {"status": "online", "proxy_url": url}


def gateway(records: dict[str, AppRecord], snapshot: dict[str, Any], plugin: bool = False) -> Any:
    host = SimpleNamespace(
        settings=Settings(),
        hooks=SimpleNamespace(has_select_environment=lambda: plugin),
    )
    process = SimpleNamespace(records=records)
    environments = SimpleNamespace(snapshot=snapshot, offline_listeners=[])

    def is_online(env: str) -> bool:
        info = environments.snapshot.get(env)
        return info is not None and info["status"] == "online"

    environments.is_online = is_online
    return ProxyGateway(host, process, environments, proxy=None)  # type: ignore[arg-type]


def record(name: str, envs: list[str]) -> AppRecord:
    return AppRecord(name=name, title=name, environments=envs, options={}, database={})


def test_the_stamp_holds_until_what_it_rests_on_changes() -> None:
    app = record("demo", ["env_a", "env_b"])
    gw = gateway({"demo": app}, {"env_a": online("http://a"), "env_b": online("http://b")})
    assert gw.express_plan("demo", {"headers": [], "query_string": b""}) == ("env_a", "http://a")
    stamp = gw.plan_stamp("demo", "env_a")
    assert stamp is not None and gw.stamp_holds("demo", "env_a", stamp)

    # a refresh that read the same: a new snapshot, so the choice is made again
    gw.environments.snapshot = dict(gw.environments.snapshot)
    assert not gw.stamp_holds("demo", "env_a", stamp)

    stamp = gw.plan_stamp("demo", "env_a")
    assert stamp is not None
    # the record replaced (a move, a stop, an edit)
    gw.process.records["demo"] = dataclasses.replace(app, environments=["env_b"])
    assert not gw.stamp_holds("demo", "env_a", stamp)

    gw.process.records["demo"] = app
    stamp = gw.plan_stamp("demo", "env_a")
    assert stamp is not None
    # the chosen environment removed in place (RedisEnvironments.remove)
    del gw.environments.snapshot["env_a"]
    assert not gw.stamp_holds("demo", "env_a", stamp)
    # the app removed
    gw.environments.snapshot["env_a"] = online("http://a")
    stamp = gw.plan_stamp("demo", "env_a")
    assert stamp is not None
    del gw.process.records["demo"]
    assert not gw.stamp_holds("demo", "env_a", stamp)
    assert gw.plan_stamp("demo", "env_a") is None


def test_an_environment_gone_offline_fails_the_stamp() -> None:
    gw = gateway({"demo": record("demo", ["env_a"])}, {"env_a": online("http://a")})
    stamp = gw.plan_stamp("demo", "env_a")
    assert stamp is not None
    stamp[1]["env_a"]["status"] = "offline"  # were it changed in place
    assert not gw.stamp_holds("demo", "env_a", stamp)


def test_no_stamp_when_a_plugin_chooses_among_environments() -> None:
    apps = {"one": record("one", ["env_a"]), "two": record("two", ["env_a", "env_b"])}
    gw = gateway(apps, {"env_a": online("http://a"), "env_b": online("http://b")}, plugin=True)
    assert gw.plan_stamp("two", "env_a") is None  # the plugin may choose otherwise next time
    assert gw.plan_stamp("one", "env_a") is not None  # one environment: nothing to choose
