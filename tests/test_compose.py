"""compose/: the deployment file parses, and every nocosup service's environment is a
configuration our own Settings accept (so a typo in a variable fails here, not in prod)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from nocosup.config import VARIABLES, Settings
from nocosup.upstreams import UpstreamPolicy

COMPOSE = Path(__file__).resolve().parent.parent / "compose" / "docker-compose.yml"
NOCOSUP_SERVICES = ("supervisor", "worker_a", "worker_b")
_INTERPOLATION = re.compile(r"\$\{([A-Z_]+)[^}]*\}")


def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_the_seed_topology_is_there() -> None:
    assert set(services()) == {"redis", "postgres", *NOCOSUP_SERVICES}


@pytest.mark.parametrize("name", NOCOSUP_SERVICES)
def test_service_environment_is_valid_configuration(name: str) -> None:
    env = {
        k: _INTERPOLATION.sub("token-from-the-shell-0123456789abcdef", str(v))
        for k, v in services()[name]["environment"].items()
    }
    known = {v.name for v in VARIABLES} | {"TZ"}
    assert set(env) <= known, set(env) - known
    settings = Settings.from_env(env)
    expected = "worker" if name.startswith("worker") else "supervisor"
    assert settings.mode == expected
    if expected == "worker":
        assert settings.proxy_url == f"http://{name}"
    else:
        assert settings.process_adapter == "remote"


def test_docker_compose_accepts_the_file() -> None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        result = subprocess.run(
            [*cmd, "-f", str(COMPOSE), "config", "-q"],
            capture_output=True,
            text=True,
            env={
                "NOCOSUP_ADMIN_TOKEN": "x",
                "NOCOSUP_CLUSTER_SECRET": "y",
                "PATH": "/usr/bin:/bin",
            },
        )
        assert result.returncode == 0, result.stderr
        return
    pytest.skip("neither 'docker compose' nor 'docker-compose' is installed")


def _settings(name: str) -> Settings:
    env = {
        k: _INTERPOLATION.sub("token-from-the-shell-0123456789abcdef", str(v))
        for k, v in services()[name]["environment"].items()
    }
    return Settings.from_env(env)


def test_the_cluster_is_signed_and_workers_derive_the_supervisors_tenant_databases() -> None:
    supervisor = _settings("supervisor")
    policy = UpstreamPolicy(supervisor.allowed_upstreams)
    assert supervisor.cluster_secret and policy.restricted
    for name in NOCOSUP_SERVICES:
        settings = _settings(name)
        assert settings.cluster_secret == supervisor.cluster_secret
        assert settings.tenant_db_base == supervisor.db_database
        if settings.mode == "worker":
            assert settings.proxy_url and policy.refusal(settings.proxy_url) is None
    assert "${NOCOSUP_CLUSTER_SECRET:?" in COMPOSE.read_text()
