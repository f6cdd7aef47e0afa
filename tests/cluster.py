"""A multi-environment deployment for tests: a supervisor and worker environments, each a
real uvicorn process (an environment with replicas is one uvicorn with ``--workers``)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path
from typing import Any

import httpx

from tests.servers import NocosupServer, ServerFactory, free_port

_counter = itertools.count(1)


class Cluster:
    def __init__(
        self,
        servers: ServerFactory,
        pg_env: dict[str, str],
        prefix: str,
        redis_url: str,
        interval: float = 0.5,
        command_redis_url: str | None = None,
        secret: str | None = None,
    ) -> None:
        self.servers = servers
        self.pg_env = pg_env
        self.prefix = f"{prefix}:{next(_counter)}"
        self.redis_url = redis_url
        self.command_redis_url = command_redis_url or redis_url
        self.interval = interval
        #: NOCOSUP_CLUSTER_SECRET of every process; None: TEST_CLUSTER_SECRET (which runs
        #: every cluster test signed), "": none.
        if secret is None:
            secret = os.environ.get("TEST_CLUSTER_SECRET")
        self.secret = secret or None
        self.supervisor: NocosupServer | None = None
        self.workers: dict[str, NocosupServer] = {}

    def common(self) -> dict[str, str]:
        return {
            **self.pg_env,
            "APP_DISCOVERY_ADAPTER": "remote",
            "APP_SUPERVISOR_REDIS_URL": self.redis_url,
            "APP_COMMAND_ADAPTER": "redis",
            "APP_COMMAND_REDIS_URL": self.command_redis_url,
            "NOCOSUP_REDIS_PREFIX": self.prefix,
            "NOCOSUP_HEARTBEAT_INTERVAL": str(self.interval),
            **({"NOCOSUP_CLUSTER_SECRET": self.secret} if self.secret else {}),
        }

    def start_supervisor(self, **extra: str) -> NocosupServer:
        env = {
            **self.common(),
            "APP_MODE": "supervisor",
            "APP_PROCESS_ADAPTER": "remote",
            # above the slowest DROP DATABASE seen on a loaded shared server (see
            # NocosupServer.client); tests of the timeout itself set their own
            "NOCOSUP_COMMAND_TIMEOUT": "60",
            **extra,
        }
        self.supervisor = self.servers.start(**env)
        return self.supervisor

    def start_worker(
        self,
        name: str,
        replicas: int = 1,
        port: int | None = None,
        storage: Path | None = None,
        **extra: str,
    ) -> NocosupServer:
        port = port or free_port()
        storage = storage or self.servers.tmp_path / f"storage-{name}"
        env = {
            **self.common(),
            "APP_MODE": "worker",
            "APP_PROCESS_ADAPTER": "local",
            "ENVIRONMENT_NAME": name,
            "ENVIRONMENT_URL": f"http://127.0.0.1:{port}",
            # as deployed: a worker believes its supervisor's X-Forwarded-* (and only its)
            "NOCOSUP_TRUSTED_PROXIES": "127.0.0.1",
            **extra,
        }
        worker = self.servers.start(storage=storage, port=port, replicas=replicas, **env)
        self.workers[name] = worker
        return worker

    async def wait_environments(
        self, client: httpx.AsyncClient, expected: dict[str, int], timeout: float = 20
    ) -> dict[str, dict[str, Any]]:
        """Wait until each named environment shows that many live instances (0: offline)."""
        deadline = time.monotonic() + timeout
        envs: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            r = await client.get("/api/environments")
            envs = {e["name"]: e for e in r.json()["environments"]} if r.status_code == 200 else {}
            if all(len(envs.get(n, {}).get("instances", [])) == k for n, k in expected.items()):
                return envs
            await asyncio.sleep(0.1)
        raise AssertionError(f"environments never reached {expected}: {envs}")


async def wait_for(check: Any, timeout: float = 20, interval: float = 0.1) -> Any:
    """Poll the coroutine function ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s (last: {last!r})")
