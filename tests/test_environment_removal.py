"""DELETE /api/environments/{name} and ``nocosup envs rm``: refused while an environment
is online or hosts apps (unless forced), and then nothing of it is left in Redis or the
registry. With real workers, Redis and PostgreSQL; files of a dropped app go on workers."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.inproc import InProc
from tests.servers import ServerFactory
from tests.test_admin_api import assert_error
from tests.test_cli import failed, ok, run


@pytest.fixture
def cluster(servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str) -> Cluster:
    return Cluster(servers, pg_env, redis_prefix, REDIS_URL)


async def test_the_local_environment_cannot_be_removed(inproc: InProc) -> None:
    r = await inproc.api.delete("/api/environments/local", params={"force": "true"})
    assert_error(r, 409, "ENVIRONMENT_IN_USE")
    assert_error(await inproc.api.delete("/api/environments/mars"), 404, "ENVIRONMENT_NOT_FOUND")
    r = await inproc.api.delete("/api/environments/local", params={"force": "maybe"})
    assert_error(r, 422, "VALIDATION_ERROR", "force")


async def redis_keys(cluster: Cluster, env: str) -> list[str]:
    client = aioredis.from_url(REDIS_URL, decode_responses=True)
    try:
        found = [k async for k in client.scan_iter(match=f"{cluster.prefix}:env:{env}*")]
        members = await client.zrange(f"{cluster.prefix}:instances", 0, -1)
        found += [f"instances:{m}" for m in members if m.startswith(f"{env}/")]
        if await client.sismember(f"{cluster.prefix}:envs", env):
            found.append(f"envs:{env}")
        return found
    finally:
        await client.aclose()


async def test_removing_environments(cluster: Cluster) -> None:
    supervisor = cluster.start_supervisor()
    cluster.start_worker("env_a")
    worker_b = cluster.start_worker("env_b")
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1, "env_b": 1})
        for name in ("kept", "gone"):
            r = await c.post("/api/apps", json={"name": name, "environments": ["env_b"]})
            assert r.status_code == 201, r.text
            assert (await c.get(f"/apps/{name}/api/info")).status_code == 200
        # an app's files on its worker go with its dropped database, and only then
        files = worker_b.storage / "apps"
        assert (files / "kept" / "builds.txt").exists() and (files / "gone").exists()
        r = await c.delete("/api/apps/gone", params={"drop_database": "true"})
        assert r.status_code == 200 and r.json()["database_dropped"] is True
        assert not (files / "gone").exists() and (files / "kept" / "builds.txt").exists()

        # online: refused, even through the CLI, which names --force
        r = await c.delete("/api/environments/env_a")
        assert_error(r, 409, "ENVIRONMENT_IN_USE")
        assert "online" in r.json()["error"]["message"]
        assert "--force" in failed(run(supervisor, "envs", "rm", "env_a"))

        cluster.workers["env_a"].stop()
        cluster.workers["env_b"].stop()
        await cluster.wait_environments(c, {"env_a": 0, "env_b": 0})
        assert await redis_keys(cluster, "env_a")  # its hash, stream, zset entry...

        # offline and hosting nothing: removed, with everything Redis held of it
        shown = ok(run(supervisor, "envs", "rm", "env_a")).stdout
        assert shown == "removed environment env_a\n"
        assert await redis_keys(cluster, "env_a") == []
        envs = (await c.get("/api/environments")).json()["environments"]
        assert [e["name"] for e in envs] == ["env_b"]
        assert_error(await c.get("/api/environments/env_a"), 404, "ENVIRONMENT_NOT_FOUND")

        # offline but still hosting "kept": refused unless forced
        r = await c.delete("/api/environments/env_b")
        assert_error(r, 409, "ENVIRONMENT_IN_USE")
        assert r.json()["error"]["apps"] == ["kept"]
        r = await c.delete("/api/environments/env_b", params={"force": "true"})
        assert r.status_code == 200, r.text
        assert r.json() == {"name": "env_b", "removed": True, "apps": ["kept"]}
        assert (await c.get("/api/environments")).json()["environments"] == []
        # the app stays registered, shown unavailable on the environment that is gone
        app = (await c.get("/api/apps/kept")).json()
        assert app["statuses"] == {"env_b": "unavailable"}

        # the app can go too: refused while its environment cannot answer, unless forced
        err = failed(run(supervisor, "apps", "rm", "kept", "--yes"))
        assert "(APP_ENVIRONMENT_UNAVAILABLE)" in err and "--force" in err
        assert ok(run(supervisor, "apps", "rm", "kept", "--yes", "--force")).stdout == (
            "removed kept (database kept)\n"
        )
        assert (await c.get("/api/apps")).json()["apps"] == []

        # a worker that comes back registers again
        cluster.start_worker("env_a")

        async def back() -> bool:
            envs = (await c.get("/api/environments")).json()["environments"]
            return [e["name"] for e in envs] == ["env_a"]

        await wait_for(back)

        # an app on an environment removed by force cannot move: where it kept its data
        # went with that environment
        cluster.start_worker("env_c")
        await cluster.wait_environments(c, {"env_a": 1, "env_c": 1})
        r = await c.post("/api/apps", json={"name": "orphan", "environments": ["env_c"]})
        assert r.status_code == 201, r.text
        cluster.workers["env_c"].stop()
        await cluster.wait_environments(c, {"env_a": 1, "env_c": 0})
        r = await c.delete("/api/environments/env_c", params={"force": "true"})
        assert r.status_code == 200, r.text
        r = await c.post("/api/apps/orphan/move", json={"to": "env_a"})
        assert_error(r, 409, "APP_NOT_MOVABLE")
        assert "'env_c', which has been removed" in r.json()["error"]["message"]
