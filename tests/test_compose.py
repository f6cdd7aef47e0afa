"""compose/: the deployment file parses, every nocosup service's environment is a
configuration our own Settings accept (so a typo in a variable fails here, not in prod),
the supervisor replicas agree on what they share, and HAProxy's file checks, balances
over exactly those replicas and, run for real in front of two supervisors, passes Host
unchanged, drops a client's forwarding claims and keeps serving when one replica stops."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from nocosup.config import VARIABLES, Settings
from nocosup.upstreams import UpstreamPolicy
from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.servers import AUTH, NocosupServer, ServerFactory, free_port
from tests.test_tenants import create

COMPOSE = Path(__file__).resolve().parent.parent / "compose" / "docker-compose.yml"
HAPROXY_CFG = COMPOSE.parent / "haproxy.cfg"
SUPERVISORS = ("supervisor_1", "supervisor_2")
WORKERS = ("worker_a", "worker_b")
NOCOSUP_SERVICES = (*SUPERVISORS, *WORKERS)
_INTERPOLATION = re.compile(r"\$\{([A-Z_]+)[^}]*\}")


def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_the_topology_is_there() -> None:
    assert set(services()) == {"redis", "postgres", "haproxy", *NOCOSUP_SERVICES}


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
    assert (name in SUPERVISORS) == (expected == "supervisor")
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
    supervisor = _settings(SUPERVISORS[0])
    policy = UpstreamPolicy(supervisor.allowed_upstreams)
    assert supervisor.cluster_secret and policy.restricted
    for name in NOCOSUP_SERVICES:
        settings = _settings(name)
        assert settings.cluster_secret == supervisor.cluster_secret
        assert settings.tenant_db_base == supervisor.db_database
        if settings.mode == "worker":
            assert settings.proxy_url and policy.refusal(settings.proxy_url) is None
    assert "${NOCOSUP_CLUSTER_SECRET:?" in COMPOSE.read_text()


def _address(name: str) -> str:
    return str(services()[name]["networks"]["nocosup"]["ipv4_address"])


def _trusts(settings: Settings, address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in settings.trusted_proxies or ())


def test_supervisor_replicas_share_registry_redis_secret_and_token() -> None:
    first, *others = (_settings(name) for name in SUPERVISORS)
    assert others, "expected more than one supervisor"
    for settings in others:
        for field in (
            "db_dialect",
            "db_host",
            "db_database",
            "tenant_db_base",
            "redis_prefix",
            "cluster_secret",
            "admin_token",
            "allowed_upstreams",
            "trusted_proxies",
        ):
            assert getattr(settings, field) == getattr(first, field), field
    environments = [services()[name]["environment"] for name in SUPERVISORS]
    for env in environments:
        assert env["NOCOSUP_ADMIN_TOKEN"].startswith("${NOCOSUP_ADMIN_TOKEN:?")
    assert len({_address(name) for name in SUPERVISORS}) == len(SUPERVISORS)
    # only HAProxy publishes the supervisors' port; the replicas are reached through it
    assert all("ports" not in services()[name] for name in SUPERVISORS)
    assert services()["haproxy"]["ports"] == ["14000:80"]


def test_workers_trust_every_supervisor_and_supervisors_trust_haproxy_alone() -> None:
    for name in WORKERS:
        settings = _settings(name)
        assert all(_trusts(settings, _address(s)) for s in SUPERVISORS), name
        assert not _trusts(settings, _address("haproxy")), name
    for name in SUPERVISORS:
        settings = _settings(name)
        assert _trusts(settings, _address("haproxy")), name
        assert not any(_trusts(settings, _address(s)) for s in SUPERVISORS), name


def _haproxy_sections() -> dict[str, list[str]]:
    """The config's sections ('backend supervisors', ...) and their directive lines."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(" ".join(line.split()), [])
        else:
            current.append(" ".join(line.split()))
    return sections


def test_haproxy_balances_over_exactly_the_supervisors_checking_readyz() -> None:
    sections = _haproxy_sections()
    haproxy = services()["haproxy"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    (frontend,) = [v for k, v in sections.items() if k.startswith("frontend ")]
    assert "bind :80" in frontend and "option forwardfor" in frontend
    backend = sections["backend supervisors"]
    assert "balance roundrobin" in backend
    assert "option httpchk" in backend
    (check,) = [line for line in backend if line.startswith("http-check send ")]
    assert "uri /readyz" in check
    # a supervisor killed mid-request: a request it never answered goes to the other one,
    # but only when it is safe to send twice
    assert "option redispatch" in backend
    (retry_on,) = [line for line in backend if line.startswith("retry-on ")]
    assert set(retry_on.split()[1:]) == {"conn-failure", "empty-response"}
    assert "http-request disable-l7-retry if !METH_GET !METH_OPTIONS" in backend
    servers = {line.split()[1]: line.split()[2] for line in backend if line.startswith("server ")}
    assert servers == {name: f"{name}:80" for name in SUPERVISORS}
    defaults = sections["defaults"]
    assert any(line.startswith("timeout tunnel ") for line in defaults)
    (default_server,) = [line for line in defaults if line.startswith("default-server ")]
    assert "init-addr last,libc,none" in default_server and " check" in default_server
    # Host reaches the supervisors as the client sent it: nothing sets or rewrites it, nor
    # an X-Forwarded-Host they would believe instead (a client's own is deleted)
    rewrites = re.compile(r"http-request (set|add|replace)-header (host|x-forwarded-host)\b")
    assert not [line for line in frontend + backend if rewrites.match(line.lower())]
    assert "http-request del-header X-Forwarded-Host" in frontend


def _haproxy() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        pytest.skip("haproxy is not installed (.ci/run installs Debian's)")
    return found


def test_haproxy_accepts_the_file() -> None:
    result = subprocess.run(
        [_haproxy(), "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def _seconds(duration: str) -> float:
    """A compose duration such as '30s', '1m30s' or '1m' in seconds."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, f"unexpected duration {duration!r}"
    return 60 * int(match[1] or 0) + int(match[2] or 0)


@pytest.mark.parametrize("name", NOCOSUP_SERVICES)
def test_docker_waits_for_the_drain_before_killing(name: str) -> None:
    settings = _settings(name)
    # uvicorn waits stop_grace + 5 for requests in flight, then every app stops at once,
    # each waiting up to stop_grace for its own; docker's default (10 s) would cut it short
    needed = (settings.stop_grace + 5) + settings.stop_grace
    assert _seconds(str(services()[name]["stop_grace_period"])) > needed


def _local_haproxy_cfg(port: int, supervisors: dict[str, int]) -> str:
    """compose/haproxy.cfg with its listening address and its servers' addresses moved to
    127.0.0.1; everything else (checks, headers, timeouts) as deployed."""
    text, bound = re.subn(r"(?m)^(\s+bind) :80$", rf"\1 127.0.0.1:{port}", HAPROXY_CFG.read_text())
    assert bound == 1
    for name, server_port in supervisors.items():
        text, moved = re.subn(
            rf"(?m)^(\s+server {name}) {name}:80$", rf"\1 127.0.0.1:{server_port}", text
        )
        assert moved == 1, name
    return text


class HAProxyFront:
    """A real HAProxy with compose's configuration in front of two supervisor ports."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.servers = dict(zip(SUPERVISORS, (free_port(), free_port()), strict=True))
        self.log = tmp_path / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = _haproxy()
        cfg = self.tmp_path / "haproxy.cfg"
        cfg.write_text(_local_haproxy_cfg(self.port, self.servers))
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def haproxy_front(tmp_path: Path) -> Iterator[HAProxyFront]:
    front = HAProxyFront(tmp_path)
    try:
        yield front
    finally:
        front.stop()


async def _behind_haproxy(
    servers: ServerFactory, cluster: Cluster, front: HAProxyFront
) -> list[NocosupServer]:
    """Two supervisors on the front's ports, a worker, the app ``echo`` started, and the
    real HAProxy started in front of them; returns the supervisors."""
    # as in compose: the supervisors believe HAProxy (here 127.0.0.1), the worker them
    supervisor_env = {
        **cluster.common(),
        "APP_MODE": "supervisor",
        "APP_PROCESS_ADAPTER": "remote",
        "NOCOSUP_TRUSTED_PROXIES": "127.0.0.1",
    }
    replicas: list[NocosupServer] = [
        servers.start(port=port, **supervisor_env) for port in front.servers.values()
    ]
    cluster.start_worker("env_a")
    for replica in replicas:
        async with replica.admin() as c:
            await cluster.wait_environments(c, {"env_a": 1})
    async with replicas[0].admin() as c:
        await create(c, "echo", options={"test": {"echo": True}}, environments=["env_a"])
        assert (await c.post("/api/apps/echo/start")).status_code == 200
    front.start()
    return replicas


async def test_haproxy_serves_through_either_supervisor_with_trusted_forwarding(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, haproxy_front: HAProxyFront
) -> None:
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    replicas = await _behind_haproxy(servers, cluster, haproxy_front)
    spoofed = {
        "Host": "public.example:8443",
        "X-Forwarded-For": "203.0.113.66",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
    }
    base = f"http://127.0.0.1:{haproxy_front.port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:

        async def answers() -> bool:
            try:
                return (await c.get("/healthz")).status_code == 200
            except httpx.TransportError:  # HAProxy is still binding its port
                return False

        await wait_for(answers)
        for _ in range(4):
            r = await c.get("/apps/echo/", headers=spoofed)
            assert r.status_code == 200, r.text
            seen = r.json()
            # Host went through unchanged; what the client claimed about forwarding did not
            assert dict(seen["headers"])["host"] == "public.example:8443"
            assert seen["client"] == "127.0.0.1" and seen["scheme"] == "http"
            assert "203.0.113.66" not in r.text and "evil.example" not in r.text
            listed = await c.get("/api/apps", headers=AUTH)
            assert [a["name"] for a in listed.json()["apps"]] == ["echo"]
        # round robin: both replicas answered
        for name in SUPERVISORS:
            assert f"supervisors/{name} " in haproxy_front.text(), name
        # one supervisor stops: HAProxy sends the connections it refuses to the other,
        # and the failing /readyz check takes it out of the rotation
        replicas[0].stop()
        for _ in range(4):
            r = await c.get("/apps/echo/")
            assert r.status_code == 200, r.text

        async def marked_down() -> bool:
            return f"{SUPERVISORS[0]} is DOWN" in haproxy_front.text()

        await wait_for(marked_down, timeout=30)
        assert (await c.get("/api/apps", headers=AUTH)).status_code == 200


async def test_a_supervisor_killed_under_load_behind_haproxy_fails_no_get(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, haproxy_front: HAProxyFront
) -> None:
    """``kill -9`` of one supervisor while GETs flow through HAProxy: those it was serving
    are closed unanswered, and compose's ``retry-on conn-failure empty-response`` sends
    them to the other one; new connections go there too (``option redispatch``). Without
    the retry line, bench/replicas.py saw about 5 failures in 1000 requests."""
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    replicas = await _behind_haproxy(servers, cluster, haproxy_front)
    base = f"http://127.0.0.1:{haproxy_front.port}"
    outcomes: list[str] = []
    stop = asyncio.Event()

    async def load(path: str, headers: dict[str, str]) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as c:
            while not stop.is_set():
                try:
                    outcomes.append(str((await c.get(path)).status_code))
                except httpx.HTTPError as exc:
                    outcomes.append(type(exc).__name__)

    async with httpx.AsyncClient(base_url=base, timeout=30) as c:

        async def answers() -> bool:
            try:
                return (await c.get("/apps/echo/")).status_code == 200
            except httpx.TransportError:  # HAProxy is still binding its port
                return False

        await wait_for(answers)
    loops = [
        asyncio.create_task(load(*job))
        for job in [("/apps/echo/", {})] * 4 + [("/api/apps", AUTH)] * 2
    ]
    try:
        await asyncio.sleep(1)
        before = len(outcomes)
        replicas[0].stop(signal.SIGKILL)
        await asyncio.sleep(2)
    finally:
        stop.set()
        await asyncio.gather(*loops)
    assert before > 0 and len(outcomes) > before
    assert set(outcomes) == {"200"}, sorted(set(outcomes))
