"""The supervisor's app management: the logic behind the admin API, in either mode.

It writes the registry (the source of truth) and drives a process adapter (local or
remote). Operations on one app are serialised by a per-app lock, so a delete never
interleaves with a start of the same app; different apps never wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nocosup import appcommands, templates
from nocosup import validation as v
from nocosup.admission import eager_cap
from nocosup.appcommands import AppCommand
from nocosup.appctx import AppContext
from nocosup.domains import check_admin_host
from nocosup.environments import EnvironmentDirectory
from nocosup.errors import (
    AppNotMovable,
    AppStateConflict,
    DatabaseError,
    EnvironmentInUse,
    InvalidInput,
    NocosupError,
)
from nocosup.listing import AppQuery, encode_cursor
from nocosup.plugins import await_me_maybe
from nocosup.process import EnvResult, ProcessAdapter, failure_type
from nocosup.provisioning import data_location, local_kind
from nocosup.registry import AppRecord, Registry
from nocosup.status import AppStatus

if TYPE_CHECKING:
    from nocosup.host import Host
    from nocosup.replicas import Replicas

log = logging.getLogger("nocosup.supervisor")
#: Records read per registry query while a status filter scans for matches.
_STATUS_SCAN_BATCH = 500
#: What an environment reports for an app it was to run and does not: nothing works there.
_FAILED_PLACEMENT = frozenset(
    {AppStatus.ERROR.value, AppStatus.NOT_FOUND.value, AppStatus.UNAVAILABLE.value}
)


class Supervisor:
    def __init__(
        self,
        host: Host,
        registry: Registry,
        process: ProcessAdapter,
        environments: EnvironmentDirectory,
    ) -> None:
        self.host = host
        self.settings = host.settings
        self.registry = registry
        self.process = process
        self.environments = environments
        self._locks: dict[str, asyncio.Lock] = {}
        #: Failover: when each app that could not be moved may be tried again (monotonic).
        self._failover_retry: dict[str, float] = {}
        #: Multi-environment mode: what this supervisor shares with its replicas.
        self.replicas: Replicas | None = None

    # --- start-up --------------------------------------------------------------------

    async def restore(self) -> None:
        """Learn every app from the registry and start those that start with the supervisor."""
        records = await self.registry.list()
        await self.process.restore(records)
        self.host.domain_routes.replace(records)
        eager = [
            r for r in records if r.desired_state == "running" and r.start_mode == "with_supervisor"
        ]
        if self.settings.process_adapter == "local":  # the apps run in this process
            eager = eager[: eager_cap(self.settings, len(eager))]
        for record in eager:
            self.host.spawn(self._start_logged(record))

    async def _start_logged(self, record: AppRecord) -> None:
        try:
            results = await self.process.start(record)
        except Exception:
            log.exception("could not start %s with the supervisor", record.name)
            return
        for r in results:
            if not r.ok:
                log.error("app %s did not start in %s: %s", record.name, r.environment, r.error)

    async def _changed(
        self,
        record: AppRecord,
        action: str,
        event: dict[str, Any] | None = None,
        **details: Any,
    ) -> None:
        """Tell live listeners (the web page) at once, plugins in order, and the other
        replicas, that an app's registration changed (``action``: created, updated or
        removed; ``event``: more for the live listeners, such as a move's ends)."""
        self.host.events.publish(
            {"type": "app_changed", "app": record.name, "action": action, **(event or {})}
        )
        hook = {"created": "app_registered", "updated": "app_updated"}.get(
            action, "app_unregistered"
        )
        app = AppContext(record, None, self.settings.instance_id, self.host)
        self.host.notify_later(hook, app=app, **details)
        if self.replicas is not None:
            try:
                await self.replicas.announce(record.name, action)
            except Exception as exc:  # the stamp check in every round catches up
                log.warning("could not tell the other replicas about %s: %r", record.name, exc)

    @contextlib.asynccontextmanager
    async def _serialized(self, name: str) -> AsyncIterator[None]:
        """One admin operation on ``name`` at a time: in this process, then (replicas)
        across every supervisor on the registry."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self.replicas is None:
                yield
                return
            async with self.replicas.admin_lock(name):
                yield

    # --- reads -----------------------------------------------------------------------

    async def list_apps(self, query: AppQuery | None = None) -> dict[str, Any]:
        """One page of apps in name order, the number of apps matching, and the cursor of
        the next page (``None`` on the last one)."""
        query = query or AppQuery()
        if query.status is None:
            total = await self.registry.count(query)
            records = await self.registry.page(query, query.limit + 1)
            more = len(records) > query.limit
            records = records[: query.limit]
            statuses = await await_me_maybe(self.process.statuses(records))
        else:
            records, statuses, total, more = await self._page_by_status(query)
        return {
            "apps": [self._app_json(r, statuses.get(r.name, {})) for r in records],
            "total": total,
            "next_cursor": encode_cursor(records[-1].name) if more and records else None,
        }

    async def _page_by_status(
        self, query: AppQuery
    ) -> tuple[list[AppRecord], dict[str, dict[str, dict[str, Any]]], int, bool]:
        """Statuses live in the runtime (or Redis), not in the registry: a status filter
        reads every candidate's status, in batches, to count the matches."""
        scan = replace(query, after=None)
        page: list[AppRecord] = []
        statuses: dict[str, dict[str, dict[str, Any]]] = {}
        total = 0
        more = False
        while True:
            batch = await self.registry.page(scan, _STATUS_SCAN_BATCH)
            if not batch:
                break
            found = await await_me_maybe(self.process.statuses(batch))
            for record in batch:
                per_env = found.get(record.name, {})
                if query.status not in env_statuses(record, per_env).values():
                    continue
                total += 1
                if query.after is not None and record.name <= query.after:
                    continue
                if len(page) < query.limit:
                    page.append(record)
                    statuses[record.name] = per_env
                else:
                    more = True
            scan = replace(scan, after=batch[-1].name)
        return page, statuses, total, more

    async def get_app(self, name: str) -> dict[str, Any]:
        record = await self.registry.get(v.app_name(name))
        return await self._describe(record)

    async def _describe(self, record: AppRecord) -> dict[str, Any]:
        statuses = await await_me_maybe(self.process.statuses([record]))
        return self._app_json(record, statuses.get(record.name, {}))

    def _app_json(self, record: AppRecord, per_env: dict[str, dict[str, Any]]) -> dict[str, Any]:
        out = record.to_json()
        out["statuses"] = env_statuses(record, per_env)
        out["errors"] = {env: info["error"] for env, info in per_env.items() if info.get("error")}
        out["last_seen_at"] = {
            env: per_env.get(env, {}).get("last_seen_at") for env in record.environments
        }
        return out

    # --- writes ----------------------------------------------------------------------

    async def create_app(self, data: dict[str, Any]) -> dict[str, Any]:
        """Validate everything, claim the name, provision the database; undo on failure."""
        v.check_fields(data, v.CREATE_FIELDS)
        if "name" not in data:
            raise InvalidInput("name is required", field="name")
        name = v.app_name(data["name"])
        title = v.title(data.get("title"), name)
        options = v.options(data.get("options"))
        spec = self.host.databases.spec_for(
            name, options.get("dbConnType"), options.get("dbProvisioner")
        )
        options["dbConnType"] = spec.conn_type
        domains = v.domains(data.get("domains"))
        check_admin_host(domains, self.settings)
        template = templates.check(data.get("template"))
        environments = await self._placement(v.environments(data.get("environments")))
        database = spec.to_json()
        record = AppRecord(
            name=name,
            title=title,
            environments=environments,
            options=options,
            database=database,
            domains=domains,
            template=template,
        )
        async with self._serialized(name):
            await self.registry.insert(record)
            try:
                await self.process.create(record)
            except BaseException as exc:
                await self._undo_create(record, exc)
                raise
            self.host.domain_routes.learn(record)
        await self._changed(record, "created")
        app = await self._describe(record)
        if record.start_mode == "with_supervisor":
            # created either way: a failed first start shows in statuses and results
            results = await self.process.start(record)
            app = await self._describe(record)
            app["results"] = _results_json(results)
        return app

    async def _undo_create(self, record: AppRecord, exc: BaseException) -> None:
        log.warning("creating %s failed, removing it again: %r", record.name, exc)
        with contextlib.suppress(Exception):
            await self.process.remove(record, drop_database=False)
        await self.registry.delete(record.name)
        if not isinstance(exc, NocosupError):
            raise DatabaseError(f"could not create application {record.name!r}: {exc}") from exc

    async def _placement(self, wanted: list[str] | None) -> list[str]:
        """Check the environments asked for, or choose one."""
        known = {e["name"]: e for e in await self.environments.list()}
        if wanted is None:
            return [await self._least_loaded(known)]
        for name in wanted:
            if name not in known:
                raise InvalidInput(
                    f"environment {name!r} is not registered; known: "
                    f"{', '.join(sorted(known)) or 'none'}",
                    field="environments",
                )
        return wanted

    async def _least_loaded(self, known: dict[str, dict[str, Any]]) -> str:
        online = [n for n, e in known.items() if e["status"] == "online"]
        if not online:
            raise InvalidInput(
                "no environment is online to place the application on", field="environments"
            )
        if len(online) == 1:
            return online[0]
        load = dict.fromkeys(online, 0)
        for record in await self.registry.list():
            for env in record.environments:
                if env in load:
                    load[env] += 1
        return min(online, key=lambda n: (load[n], n))

    async def update_app(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        v.check_fields(data, v.PATCH_FIELDS)
        async with self._serialized(name):
            record = await self.registry.get(v.app_name(name))
            changes: dict[str, Any] = {}
            if "title" in data:
                changes["title"] = v.title(data["title"], record.title)
            if "options" in data:
                if not isinstance(data["options"], dict):
                    raise InvalidInput(
                        "options must be a JSON object (a merge patch)", field="options"
                    )
                merged = v.options(v.merge_patch(record.options, data["options"]))
                for key in ("dbConnType", "dbProvisioner"):
                    if merged.get(key) != record.options.get(key):
                        raise InvalidInput(
                            f"options.{key} cannot change after creation", field=f"options.{key}"
                        )
                changes["options"] = merged
            if "domains" in data:
                domains = v.domains(data["domains"])
                check_admin_host(domains, self.settings)
                if domains != record.domains:
                    changes["domains"] = domains
            if changes:
                record = await self.registry.update(record.changed(**changes))
                self.host.domain_routes.learn(record)
                await self.process.update(record)
                await self._changed(record, "updated", changed=sorted(changes))
        return await self._describe(record)

    async def delete_app(
        self, name: str, drop_database: bool, force: bool = False
    ) -> dict[str, Any]:
        """Remove the app everywhere; keep it registered if an environment could not
        remove it, unless ``force`` (an environment gone for good keeps its data)."""
        async with self._serialized(name):
            record = await self.registry.get(v.app_name(name))
            stopped = record.changed(desired_state="stopped")
            await self.registry.update(stopped)
            results = await self.process.remove(stopped, drop_database)
            failed = [r for r in results if not r.ok]
            if failed and not force:
                detail = "; ".join(f"{r.environment}: {r.error or r.status}" for r in failed)
                raise failure_type(failed)(
                    f"application {name!r} could not be removed everywhere, so it is kept "
                    f"({detail}); retry, or force the removal to forget it anyway "
                    "(?force=true, or 'nocosup apps rm --force')",
                    results=_results_json(results),
                )
            await self.registry.delete(name)
            self.host.domain_routes.forget(name)
            if failed:
                await self.process.forget(stopped)
        self._locks.pop(name, None)
        self.host.metrics.forget(name)
        dropped = drop_database and not failed
        await self._changed(stopped, "removed", database_dropped=dropped)
        return {
            "name": name,
            "removed": True,
            "database_dropped": dropped,
            "results": _results_json(results),
        }

    async def delete_environment(self, name: str, force: bool = False) -> dict[str, Any]:
        """Forget an environment that is gone: 409 while it is online or apps still
        list it, unless ``force`` (the apps keep listing it, and show it unavailable)."""
        env = await self.environments.get(name)
        hosted = [r.name for r in await self.registry.list() if name in r.environments]
        if not force:
            hint = "or force the removal (?force=true, or 'nocosup envs rm --force')"
            if env["status"] == "online":
                raise EnvironmentInUse(
                    f"environment {name!r} is online ({len(env['instances'])} instances); "
                    f"stop its workers first, {hint}",
                    apps=hosted,
                )
            if hosted:
                raise EnvironmentInUse(
                    f"environment {name!r} still hosts {len(hosted)} apps "
                    f"({', '.join(hosted[:10])}); remove them or place them elsewhere "
                    f"first, {hint}",
                    apps=hosted,
                )
        await self.environments.remove(name)
        gone = {**env, "status": "removed", "instances": []}
        gone.pop("dead_letters", None)
        self.host.events.publish({"type": "environment", "environment": gone})
        return {"name": name, "removed": True, "apps": hosted}

    async def start_app(self, name: str, wait: bool = True) -> tuple[dict[str, Any], bool]:
        """Start the app; returns (app JSON, finished)."""
        async with self._serialized(name):
            record = await self.registry.get(v.app_name(name))
            if record.desired_state != "running":
                record = await self.registry.update(record.changed(desired_state="running"))
                await self._changed(record, "updated", changed=["desired_state"])
        if not wait:
            self.host.spawn(self._start_logged(record))
            # let it take its first step, so the 202 shows the start under way (locally)
            await asyncio.sleep(0)
            return await self._describe(record), False
        return await self._start(record), True

    async def _start(self, record: AppRecord) -> dict[str, Any]:
        results = await self.process.start(record)
        return await self._checked(record, results, "start")

    async def stop_app(self, name: str, wait: bool = True) -> tuple[dict[str, Any], bool]:
        async with self._serialized(name):
            record = await self.registry.get(v.app_name(name))
            if record.desired_state != "stopped":
                record = await self.registry.update(record.changed(desired_state="stopped"))
                await self._changed(record, "updated", changed=["desired_state"])
        if not wait:
            self.host.spawn(self.process.stop(record))
            await asyncio.sleep(0)
            return await self._describe(record), False
        results = await self.process.stop(record)
        return await self._checked(record, results, "stop"), True

    # --- moves -----------------------------------------------------------------------

    async def move_app(
        self,
        name: str,
        data: dict[str, Any],
        reason: str = "admin",
        expect: list[str] | None = None,
    ) -> dict[str, Any]:
        """Move the app to the environment ``data["to"]`` names; it ends there only.

        The order keeps the registry (the truth) naming exactly one placement at every
        moment, and the app served throughout:

        1. the registry switches to the target (then the config cache, then the routes):
           requests go to the target at once, and wait there for the app's boot;
        2. the target starts the app (if it should run); if it cannot, the registry
           switches back and the target forgets the app (the source never stopped);
        3. the sources stop and forget the app, keeping its database (in-flight requests
           finish first).

        Both run the app for a moment between 2 and 3, which is why only an app whose
        database every environment reaches the same (PostgreSQL) may move. A crash after
        1 leaves a copy where the registry no longer places it: the upkeep's sweep
        (:meth:`sweep_strays`) removes it, so the app converges on the target.
        ``expect``: the placement a failover decided on (skipped if it changed since).
        """
        target = v.move_target(data)
        if not self.process.can_move:
            raise AppNotMovable(
                "apps run inside the supervisor in shared-memory mode (one environment): "
                "moving needs multi-environment mode"
            )
        async with self._serialized(name):
            record = await self.registry.get(v.app_name(name))
            if expect is not None and record.environments != expect:
                return await self._describe(record)  # an operator moved it meanwhile
            known = {e["name"]: e for e in await self.environments.list()}
            if target not in known:
                raise InvalidInput(
                    f"environment {target!r} is not registered; known: "
                    f"{', '.join(sorted(known)) or 'none'}",
                    field="to",
                )
            if record.environments == [target]:
                raise InvalidInput(
                    f"application {name!r} already runs on environment {target!r}", field="to"
                )
            if known[target]["status"] != "online":
                raise AppNotMovable(
                    f"environment {target!r} is offline (no live worker): application "
                    f"{name!r} cannot move there now"
                )
            sources = [e for e in record.environments if e != target]
            self._check_data_follows(record, sources, target, known)
            return await self._move(record, sources, target, reason)

    def _check_data_follows(
        self, record: AppRecord, sources: list[str], target: str, known: dict[str, Any]
    ) -> None:
        """AppNotMovable naming why unless the app's data is the same on ``target`` as on
        every source (the same PostgreSQL server and database names)."""
        there_info = known[target].get("databases")
        there = data_location(record.database, there_info)
        for source in sources:
            if source not in known:
                raise AppNotMovable(
                    f"application {record.name!r} is placed on environment {source!r}, "
                    "which has been removed: where it kept the app's data is no longer "
                    "known, so the app cannot move"
                )
            info = known[source].get("databases")
            here = data_location(record.database, info)
            if here is None:
                raise AppNotMovable(
                    f"application {record.name!r} keeps its data in "
                    f"{local_kind(record.database, info)} of environment {source!r}, which "
                    f"environment {target!r} cannot reach; only an app whose database is on "
                    "a shared PostgreSQL server (a database or schema per app) can move"
                )
            if there is None:
                raise AppNotMovable(
                    f"application {record.name!r} would keep its data in "
                    f"{local_kind(record.database, there_info)} of environment {target!r}, "
                    f"not on {here} where it is now"
                )
            if here != there:
                raise AppNotMovable(
                    f"application {record.name!r} keeps its data on {here} (environment "
                    f"{source!r}), but environment {target!r} uses {there}: they do not "
                    "share the database"
                )

    async def _move(
        self, record: AppRecord, sources: list[str], target: str, reason: str
    ) -> dict[str, Any]:
        name = record.name
        moved = await self.registry.update(record.changed(environments=[target]))
        log.info("moving %s from %s to %s (%s)", name, ", ".join(sources), target, reason)
        ends = {"from": sources, "to": target, "reason": reason}
        # the config cache and this replica's routes first, then the other replicas: a
        # worker of the target finds the new record when the first request comes
        await self.process.update(moved)
        running = moved.desired_state == "running"
        results: list[EnvResult] = []
        if running:
            await self._changed(
                moved, "updated", {"move": {**ends, "state": "starting"}}, changed=["environments"]
            )
            results = await self.process.start(moved)
            failed = [r for r in results if not r.ok]
            if failed:
                await self._move_back(moved, record.environments, target, ends)
                detail = "; ".join(f"{r.environment}: {r.error or r.status}" for r in failed)
                raise failure_type(failed)(
                    f"application {name!r} did not start on environment {target!r}, so it "
                    f"stays on {', '.join(record.environments)}: {detail}",
                    app=await self._describe(await self.registry.get(name)),
                    results=_results_json(results),
                )
        left = await self.process.leave(moved, sources)
        for r in left:
            if not r.ok:  # the sweep of strays removes it once the environment answers
                log.warning("moved %s, but %s did not let it go: %s", name, r.environment, r.error)
        await self._changed(
            moved, "updated", {"move": {**ends, "state": "done"}}, changed=["environments"]
        )
        self.host.metrics.app_event("failover" if reason == "failover" else "move", name, target)
        app = await self._describe(moved)
        app["results"] = _results_json([*results, *left])
        app["moved"] = {"from": sources, "to": target}
        return app

    async def _move_back(
        self, moved: AppRecord, environments: list[str], target: str, ends: dict[str, Any]
    ) -> None:
        """Undo a move whose target did not start the app: the registry names the sources
        again, and the target forgets the app."""
        back = await self.registry.update(moved.changed(environments=environments))
        await self.process.update(back)
        await self._changed(
            back, "updated", {"move": {**ends, "state": "failed"}}, changed=["environments"]
        )
        for r in await self.process.leave(back, [target]):
            if not r.ok:
                log.warning("%s keeps a failed copy of %s: %s", target, back.name, r.error)

    async def failover(self, snapshot: dict[str, dict[str, Any]]) -> None:
        """Move each app with ``options.failover`` whose every environment has been offline
        for NOCOSUP_FAILOVER_AFTER seconds (since its last heartbeat) to the least-loaded
        online environment that reaches its data. Runs on the upkeep lease holder only;
        an app that could not move is tried again after a pause, not every round."""
        records = getattr(self.process, "records", {})
        after, now = self.settings.failover_after, time.time()
        for record in list(records.values()):
            if record.options.get("failover") is not True:
                continue
            if not all(_offline_for(snapshot.get(e), now) >= after for e in record.environments):
                continue
            if self._failover_retry.get(record.name, 0) > time.monotonic():
                continue
            self._failover_retry[record.name] = time.monotonic() + max(30.0, after)
            here = [
                data_location(record.database, (snapshot.get(e) or {}).get("databases"))
                for e in record.environments
            ]
            candidates = {
                n: e
                for n, e in snapshot.items()
                if e["status"] == "online"
                and here[0] is not None
                and all(h == here[0] for h in here)
                and data_location(record.database, e.get("databases")) == here[0]
            }
            if not candidates:
                log.warning(
                    "failover: %s is offline on %s, and no online environment reaches its "
                    "data; retrying later",
                    record.name,
                    ", ".join(record.environments),
                )
                continue
            target = await self._least_loaded(candidates)
            log.warning(
                "failover: %s offline on %s for %ss: moving it to %s",
                record.name,
                ", ".join(record.environments),
                after,
                target,
            )
            try:
                await self.move_app(
                    record.name, {"to": target}, "failover", expect=record.environments
                )
            except NocosupError as exc:
                log.warning("failover of %s to %s failed: %s", record.name, target, exc.message)
                continue
            self._failover_retry.pop(record.name, None)

    async def sweep_strays(self, live: set[str], statuses: dict[str, set[str]]) -> None:
        """Remove each app from the environments that run it though the registry no
        longer places it there (a move cut short between its switch and its stop on the
        source): ``statuses`` maps apps to the ``{env}/{instance}`` reporting them."""
        records = getattr(self.process, "records", {})
        for name, members in statuses.items():
            record = records.get(name)
            if record is None:
                continue
            stray = sorted(
                {m.partition("/")[0] for m in members if m in live} - set(record.environments)
            )
            if not stray:
                continue
            try:
                async with self._serialized(name):
                    fresh = await self.registry.get(name)
                    gone = [e for e in stray if e not in fresh.environments]
                    if gone and await self._placement_failed(fresh):
                        log.warning(
                            "%s does not run where the registry places it (%s): keeping its "
                            "copy on %s; move it there to use it, or start it where it is placed",
                            name,
                            ", ".join(fresh.environments),
                            ", ".join(gone),
                        )
                    elif gone:
                        log.warning(
                            "%s runs on %s, where the registry does not place it: removing "
                            "it there",
                            name,
                            ", ".join(gone),
                        )
                        await self.process.leave(fresh, gone)
            except NocosupError as exc:  # removed meanwhile, busy, Redis: the next sweep
                log.warning("could not remove %s from %s: %s", name, ", ".join(stray), exc)

    async def _placement_failed(self, record: AppRecord) -> bool:
        """Whether an app that should run reports ``error``, ``not_found`` or
        ``unavailable`` on every environment the registry places it on: a move cut short
        after its target failed to start it. Its copy elsewhere may then be the only one
        that works, so the sweep keeps it."""
        if record.desired_state != "running":
            return False
        found = await await_me_maybe(self.process.statuses([record]))
        placed = found.get(record.name, {})
        return all(
            (placed.get(env) or {}).get("status") in _FAILED_PLACEMENT
            for env in record.environments
        )

    async def _check_still_wanted(
        self, record: AppRecord, verb: str, results: list[EnvResult]
    ) -> None:
        """A start (stop) that did not end running (stopped) because a stop (start) of the
        same app came in meanwhile is a conflict between the two requests (409), not a
        failure of the environments."""
        try:
            fresh = await self.registry.get(record.name)
        except NocosupError:
            return
        wanted = "running" if verb == "start" else "stopped"
        if fresh.desired_state != wanted:
            other = "stop" if verb == "start" else "start"
            raise AppStateConflict(
                f"application {record.name!r} did not {verb}: a {other} of it came in "
                f"meanwhile (desired state now {fresh.desired_state!r})",
                app=await self._describe(fresh),
                results=_results_json(results),
            )

    # --- maintenance commands --------------------------------------------------------

    def app_commands(self, record: AppRecord) -> dict[str, AppCommand]:
        """What the plugins installed here offer for the app (a worker runs its own)."""
        ctx = AppContext(record, None, self.settings.instance_id, self.host)
        return self.host.hooks.app_commands(ctx)

    async def list_commands(self, name: str) -> dict[str, Any]:
        record = await self.registry.get(v.app_name(name))
        return {"commands": appcommands.describe(self.app_commands(record))}

    async def run_command(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        """Run a maintenance command in every environment of the app, in order; one admin
        operation on the app at a time (a start or stop waits for it)."""
        async with self._serialized(name):
            record = await self.registry.get(v.app_name(name))
            command, args = appcommands.check_request(data, self.app_commands(record))
            results = await self.process.run_command(record, command, args)
            return await self._checked(record, results, f"run {command!r}", still_wanted=False)

    async def _checked(
        self, record: AppRecord, results: list[EnvResult], verb: str, still_wanted: bool = True
    ) -> dict[str, Any]:
        app = await self._describe(record)
        failed = [r for r in results if not r.ok]
        if failed:
            if still_wanted:
                await self._check_still_wanted(record, verb, results)
            detail = "; ".join(f"{r.environment}: {r.error or r.status}" for r in failed)
            raise failure_type(failed)(
                f"application {record.name!r} did not {verb}: {detail}",
                app=app,
                results=_results_json(results),
            )
        app["results"] = _results_json(results)
        return app


def env_statuses(record: AppRecord, per_env: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The status of ``record`` on each of its environments (``not_found`` where unknown)."""
    return {
        env: per_env.get(env, {}).get("status", AppStatus.NOT_FOUND.value)
        for env in record.environments
    }


def _offline_for(env: dict[str, Any] | None, now: float) -> float:
    """Seconds ``env`` has been offline, counted from its last heartbeat (0: online or
    never seen beating)."""
    if env is None or env.get("status") == "online" or not env.get("last_heartbeat_at"):
        return 0.0
    try:
        seen = datetime.fromisoformat(str(env["last_heartbeat_at"])).timestamp()
    except ValueError:
        return 0.0
    return max(0.0, now - seen)


def _results_json(results: list[EnvResult]) -> dict[str, Any]:
    return {r.environment: r.to_json() for r in results}
