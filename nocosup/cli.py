"""The ``nocosup`` command: ``serve`` runs a host under uvicorn; ``apps`` and ``envs``
drive a running supervisor through its admin API (NOCOSUP_URL, NOCOSUP_ADMIN_TOKEN).

Exit codes: 0 done, 1 the server refused or failed (or could not be reached), 2 bad usage
or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import logging.config
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from nocosup import __version__, strictjson
from nocosup.client import (
    AdminClient,
    ApiError,
    ClientConfig,
    ConnectionFailed,
    RequestTimedOut,
)
from nocosup.errors import ConfigError

if TYPE_CHECKING:
    from nocosup.config import Settings

DESCRIPTION = """\
serve runs a host under uvicorn; apps and envs drive a running supervisor through its
admin API, found at $NOCOSUP_URL (or --url) with the token $NOCOSUP_ADMIN_TOKEN (or --token).

exit codes: 0 done, 1 the server refused or failed or could not be reached, 2 bad usage
or configuration, 130 interrupted."""

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: A copy of validation.START_MODES (a test checks they agree): importing that module
#: pulls in SQLAlchemy and would slow every CLI call down.
START_MODES = ("on_first_request", "with_supervisor")
#: Seconds between two polls of an app's statuses while a start or stop runs.
POLL_INTERVAL = 0.2
#: Apps fetched per request by `apps list` (the API's largest page is 1000).
LIST_PAGE = 500
SPINNER = "|/-\\"


# --- serve --------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from nocosup.config import Settings
    from nocosup.host import create_host
    from nocosup.server import attach_limits, uvicorn_options
    from nocosup.storage import check_storage

    logging_config = log_config(args.log_level)
    logging.config.dictConfig(logging_config)
    # As uvicorn does: NOCOSUP_APP_FACTORY=tenants:build finds ./tenants.py. Replicas
    # (--workers) are spawned with this sys.path.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if args.forwarded_allow_ips is not None:
        print(
            "nocosup: --forwarded-allow-ips is gone: list the proxies whose X-Forwarded-* "
            "headers are believed in NOCOSUP_TRUSTED_PROXIES (IPs or CIDRs)",
            file=sys.stderr,
        )
        return 2
    try:
        settings = Settings.from_env()
        check_storage(settings)
        host = create_host(settings)
    except ConfigError as exc:
        print(f"nocosup: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("nocosup: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and settings.mode != "worker" and settings.process_adapter != "remote":
        # replicas share only the registry and Redis: a shared-memory host would run every
        # tenant once per replica
        print(
            "nocosup: --workers > 1 needs APP_MODE=worker (replicas of one environment) or "
            "a multi-environment supervisor (APP_PROCESS_ADAPTER=remote)",
            file=sys.stderr,
        )
        return 2
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "lifespan": "on",
        "access_log": args.access_log,
        "log_level": args.log_level,
        # uvicorn applies it in every replica too (a parent's logging setup reaches none)
        "log_config": logging_config,
        # forwarded headers are the host's business (nocosup.forwarded): the client,
        # scheme and Host it sees come from NOCOSUP_TRUSTED_PROXIES only
        "proxy_headers": False,
        "timeout_graceful_shutdown": settings.stop_grace + 5,
        **uvicorn_options(settings, args.http),
    }
    if args.workers > 1:
        return _serve_replicas(args.workers, options, settings)
    server = uvicorn.Server(attach_limits(uvicorn.Config(host, **options), settings))
    server.run()
    return 0 if server.started else STARTUP_FAILED


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration plus a root handler for nocosup's own loggers (and
    the tenants'), as a dict uvicorn applies in each process it starts."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["nocosup"] = {"format": LOG_FORMAT}
    config["handlers"]["nocosup"] = {
        "class": "logging.StreamHandler",
        "formatter": "nocosup",
        "stream": "ext://sys.stderr",
    }
    config["root"] = {"handlers": ["nocosup"], "level": level.upper()}
    # `databases` logs every connect at INFO: one line per tenant start is noise.
    config["loggers"]["databases"] = {"level": "WARNING"}
    return config


#: uvicorn's exit code for an app that failed to start; ours too.
STARTUP_FAILED = 3


def _serve_replicas(workers: int, options: dict[str, Any], settings: Settings) -> int:
    """Each process builds its own host (own instance id) on one shared socket; exits 3
    when a replica failed to start (uvicorn.run would exit 0 there)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from nocosup.server import attach_limits

    config = uvicorn.Config("nocosup.host:create_host", factory=True, workers=workers, **options)
    attach_limits(config, settings)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    failed = any(p.exitcode == STARTUP_FAILED for p in supervisor.processes)
    return STARTUP_FAILED if failed else 0


# --- output helpers -----------------------------------------------------------------------


class UsageError(Exception):
    """A bad value argparse cannot check (``--option``): printed, exit 2."""


class Failure(Exception):
    """A command failed for a reason the CLI itself explains: printed, exit 1."""


def out(text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def print_json(data: Any) -> None:
    out(json.dumps(data, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last one is not padded."""
    cells = [list(headers), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def gist(error: str | None) -> str:
    """One line for an error text: a Python traceback is cut down to its prefix and last line.

    A failed lifespan reaches the API as ``LifespanError: Traceback (most recent call
    last): ...``; the last line (``RuntimeError: ...``) is what a reader needs.
    """
    if not error:
        return ""
    text = error.strip()
    marker = "Traceback (most recent call last):"
    if marker in text:
        head, _, tail = text.partition(marker)
        last = [line.strip() for line in tail.splitlines() if line.strip()]
        text = head.strip() + (" " + last[-1] if last else "")
    return " ".join(text.split())


def statuses_text(app: Mapping[str, Any]) -> str:
    """``env_a:running env_b:stopped`` in the app's environment order."""
    statuses = app.get("statuses") or {}
    order = list(app.get("environments") or [])
    order += [env for env in statuses if env not in order]
    return " ".join(f"{env}:{statuses.get(env, 'unknown')}" for env in order) or "-"


def when(iso: str | None) -> str:
    """An API timestamp shortened to seconds, with its age when it parses."""
    if not iso:
        return "-"
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    age = (datetime.now(UTC) - moment).total_seconds()
    stamp = moment.strftime("%Y-%m-%d %H:%M:%SZ")
    if age < 1:
        return f"{stamp} (just now)"
    if age < 120:
        return f"{stamp} ({age:.0f}s ago)"
    if age < 7200:
        return f"{stamp} ({age / 60:.0f}m ago)"
    return stamp


def print_api_error(exc: ApiError, as_json: bool) -> None:
    """``nocosup: <message> (<CODE>)`` on stderr, then one line per failed environment.

    With ``--json`` the error body goes to stdout too: scripts read the same shape as the
    API's, ``results`` included.
    """
    if as_json and exc.body is not None:
        print_json(exc.body)
    err(f"nocosup: {gist(exc.message)} ({exc.code})")
    results = exc.details.get("results")
    if isinstance(results, dict):
        for env, result in results.items():
            if isinstance(result, dict) and not result.get("ok", True):
                err(f"  {env}: {result.get('status')}: {gist(result.get('error')) or 'no detail'}")
    if exc.code == "UNAUTHORIZED":
        err("  check NOCOSUP_ADMIN_TOKEN or --token")
    elif exc.code == "NOT_FOUND" or exc.code.startswith("HTTP_"):
        err("  is NOCOSUP_URL (or --url) the supervisor's base URL?")


# --- apps and envs ------------------------------------------------------------------------


def _apps_list(api: AdminClient, args: argparse.Namespace) -> int:
    filters = {
        key: value
        for key, value in (
            ("status", args.status),
            ("environment", args.environment),
            ("prefix", args.prefix),
        )
        if value is not None
    }
    apps, total = _fetch_apps(api, filters, args.limit)
    if args.json:
        print_json({"apps": apps, "total": total})
        return 0
    if not apps:
        if filters:
            out("no apps match")
        else:
            out("no apps (create one with: nocosup apps create NAME)")
        return 0
    rows = [
        [
            a["name"],
            a.get("title", ""),
            ",".join(a.get("environments") or []) or "-",
            statuses_text(a),
            a.get("desired_state", "-"),
        ]
        for a in apps
    ]
    out(table(["NAME", "TITLE", "ENVIRONMENTS", "STATUS", "DESIRED"], rows))
    if len(apps) < total:
        out(f"({len(apps)} of {total} shown; --limit N to see more)")
    return 0


def _fetch_apps(
    api: AdminClient, filters: dict[str, str], limit: int | None
) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` apps (all when ``None``) matching ``filters``, page by page, and
    how many match in all."""
    apps: list[dict[str, Any]] = []
    cursor: str | None = None
    total = 0
    while limit is None or len(apps) < limit:
        want = LIST_PAGE if limit is None else min(LIST_PAGE, limit - len(apps))
        params: dict[str, str | int] = {"limit": want, **filters}
        if cursor is not None:
            params["cursor"] = cursor
        data = api.list_apps(**params)
        apps.extend(data["apps"])
        total = data["total"] if isinstance(data.get("total"), int) else len(apps)
        cursor = data.get("next_cursor")
        if not isinstance(cursor, str) or not data["apps"]:
            break
    return apps, total


def json_pairs(items: list[str] | None, flag: str, example: str) -> dict[str, Any]:
    """``FLAG KEY=JSON`` pairs as one object; a UsageError names the bad pair."""
    found: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"{flag} {item!r}: expected KEY=JSON_VALUE, e.g. {example}")
        if key in found:
            raise UsageError(f"{flag} {key} is given twice")
        try:
            found[key] = strictjson.loads(raw)
        except strictjson.JSONRejected as exc:
            if exc.message.startswith("not valid JSON"):
                raise UsageError(
                    f"{flag} {item!r}: the value must be JSON; for a string write "
                    f"{key}='\"{raw}\"'"
                ) from None
            where = exc.message.removeprefix("value: ")
            raise UsageError(f"{flag} {key}: {where}") from None
    return found


def parse_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--option KEY=JSON`` pairs plus ``--start-mode``, ``--db-conn-type`` and
    ``--db-provisioner`` as one object."""
    options = json_pairs(args.option, "--option", "color='\"blue\"'")
    for flag, key, value in (
        ("--start-mode", "startMode", args.start_mode),
        ("--db-conn-type", "dbConnType", args.db_conn_type),
        ("--db-provisioner", "dbProvisioner", args.db_provisioner),
    ):
        if value is None:
            continue
        if key in options and options[key] != value:
            raise UsageError(f"{flag} {value} contradicts --option {key}={options[key]!r}")
        options[key] = value
    return options


def _apps_create(api: AdminClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.title is not None:
        body["title"] = args.title
    if args.environments:
        body["environments"] = args.environments
    if args.domains:
        body["domains"] = args.domains
    if args.template is not None:
        body["template"] = args.template
    options = parse_options(args)
    if options:
        body["options"] = options
    try:
        app = api.create_app(body)
    except ApiError as exc:
        print_api_error(exc, args.json)
        return EXIT_FAILED
    # startMode=with_supervisor: the app is created, then started; the start may fail.
    failed = {env: r for env, r in (app.get("results") or {}).items() if not r.get("ok")}
    if args.json:
        print_json(app)
    else:
        out(f"created {app['name']}")
        out(describe(app))
    if failed:
        detail = "; ".join(
            f"{env}: {gist(r.get('error')) or r.get('status')}" for env, r in failed.items()
        )
        err(f"nocosup: application {args.name!r} did not start: {detail}")
        err(
            f"  {args.name} was created but did not start: fix it and run "
            f"'nocosup apps start {args.name}', or remove it with 'nocosup apps rm {args.name}'"
        )
        return EXIT_FAILED
    return 0


def last_seen_text(app: Mapping[str, Any]) -> str:
    """``env:when`` per environment where the app served a request, ``-`` when none."""
    seen = app.get("last_seen_at") or {}
    return ", ".join(f"{env}:{when(iso)}" for env, iso in seen.items() if iso) or "-"


def describe(app: Mapping[str, Any]) -> str:
    """Every field of an app, one per line; full error texts indented at the end."""
    shown = {"name", "title", "environments", "statuses", "errors", "desired_state"}
    shown |= {"options", "database", "version", "created_at", "updated_at", "domains"}
    shown |= {"template"}
    shown |= {"last_seen_at"}
    options = dict(app.get("options") or {})
    database = app.get("database") or {}
    rows: list[tuple[str, str]] = [
        ("name", str(app.get("name", ""))),
        ("title", str(app.get("title", ""))),
        ("template", app.get("template") or "(default)"),
        ("environments", ", ".join(app.get("environments") or []) or "-"),
        ("status", statuses_text(app)),
        ("desired state", str(app.get("desired_state", "-"))),
        ("last seen", last_seen_text(app)),
        ("start mode", str(options.pop("startMode", "-"))),
        ("db conn type", str(options.pop("dbConnType", "-"))),
        (
            "database",
            ", ".join(f"{k}={v}" for k, v in database.items() if k != "connType" and v is not None)
            or "-",
        ),
        ("options", json.dumps(options, sort_keys=True) if options else "-"),
        ("domains", ", ".join(app.get("domains") or []) or "-"),
        ("version", str(app.get("version", "-"))),
        ("created", when(app.get("created_at"))),
        ("updated", when(app.get("updated_at"))),
    ]
    rows += [(k, json.dumps(v)) for k, v in app.items() if k not in shown]
    width = max(len(label) for label, _ in rows) + 1
    lines = [f"{(label + ':').ljust(width)}  {value}" for label, value in rows]
    errors = app.get("errors") or {}
    if errors:
        lines.append("errors:")
        for env, text in errors.items():
            lines.append(f"  {env}:")
            lines.extend(f"    {line}" for line in str(text).rstrip().splitlines())
    return "\n".join(lines)


def _apps_show(api: AdminClient, args: argparse.Namespace) -> int:
    app = api.get_app(args.name)
    if args.json:
        print_json(app)
    else:
        out(describe(app))
    return 0


class Progress:
    """Shows an app's per-environment statuses while a start or stop runs.

    On a terminal: one line redrawn in place with a spinner. Elsewhere (a pipe, a CI log):
    a plain line per status change, so the log reads as the sequence of transitions.
    """

    def __init__(self, stream: TextIO, verb: str, name: str, to: str | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        doing = {"start": "starting", "stop": "stopping", "move": "moving"}[verb]
        self.label = f"{doing} {name}" + (f" to {to}" if to else "")
        self.seen: dict[str, str] = {}
        self.started = time.monotonic()
        self.frame = 0
        if self.tty:
            self.update(None)  # the spinner shows at once, before the first poll answers
        else:
            self._line(self.label)

    def update(self, app: Mapping[str, Any] | None) -> None:
        statuses = dict((app or {}).get("statuses") or {})
        if not self.tty:
            for env, status in statuses.items():
                if self.seen.get(env) != status:
                    self._line(f"  {env}: {status}")
        self.seen.update(statuses)
        if self.tty:
            self.frame += 1
            current = " ".join(f"{e}:{s}" for e, s in self.seen.items()) or "..."
            elapsed = time.monotonic() - self.started
            self.stream.write(
                f"\r\x1b[K{SPINNER[self.frame % len(SPINNER)]} {self.label}  {current}  "
                f"{elapsed:.0f}s"
            )
            self.stream.flush()

    def finish(self, app: Mapping[str, Any] | None) -> None:
        """Show the final statuses (as plain lines) and clear the spinner."""
        if app is not None and not self.tty:
            self.update(app)
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def run_command(
    make_client: Callable[[float], AdminClient],
    name: str,
    verb: str,
    timeout: float,
    progress: Progress | None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """POST start/stop/move (``body``: the move's) and wait for its answer while polling
    the app's statuses.

    The waiting endpoint, not the polls, decides the outcome: right after a start the
    statuses may still show the previous run (``stopped``, or an old ``error``), so a poll
    cannot tell "not begun yet" from "done". Raises the command's ApiError, or Failure when
    ``timeout`` passes first (the server carries on: the command is not cancelled).
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def call() -> None:
        try:
            # A little longer than ours, so that our deadline, not httpx's, reports it.
            with make_client(timeout + 5) as api:
                outcome["app"] = api.command(name, verb, body)
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=call, name=f"nocosup-{verb}", daemon=True).start()
    deadline = time.monotonic() + timeout
    with make_client(timeout) as poller:
        while not done.wait(POLL_INTERVAL if progress else 1.0):
            left = deadline - time.monotonic()
            if left <= 0:
                seen = progress.seen if progress else {}
                now = " ".join(f"{e}:{s}" for e, s in seen.items()) or "no status seen"
                raise Failure(
                    f"gave up waiting after {timeout:g} s for {name} to {verb} ({now}); "
                    f"the server carries on: see 'nocosup apps show {name}'"
                )
            if progress is not None:
                progress.update(_poll(poller, name, min(left, 10.0)))
    if "error" in outcome:
        raise outcome["error"]
    app: dict[str, Any] = outcome["app"]
    return app


def _poll(api: AdminClient, name: str, timeout: float) -> dict[str, Any] | None:
    """The app's current JSON, or None if this poll failed (the command's answer decides)."""
    try:
        return api.get_app(name, timeout=max(timeout, 0.1))
    except (ApiError, ConnectionFailed, RequestTimedOut):
        return None


def _apps_command(api: AdminClient, args: argparse.Namespace, verb: str) -> int:
    to = getattr(args, "to", None)
    progress = None if args.json else Progress(sys.stderr, verb, args.name, to)
    try:
        app = run_command(
            lambda timeout: AdminClient(api.config, timeout=timeout),
            args.name,
            verb,
            args.timeout,
            progress,
            {"to": to} if verb == "move" else None,
        )
    except ApiError as exc:
        if progress is not None:
            failed_app = exc.details.get("app")
            progress.finish(failed_app if isinstance(failed_app, dict) else None)
        print_api_error(exc, args.json)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if progress is not None:
            progress.finish(None)
        err(f"\nnocosup: interrupted; the server carries on with the {verb} of {args.name}")
        return EXIT_INTERRUPTED
    except BaseException:
        if progress is not None:
            progress.finish(None)
        raise
    if progress is not None:
        progress.finish(app)
    if args.json:
        print_json(app)
    else:
        done = {"start": "started", "stop": "stopped", "move": f"moved to {to}"}[verb]
        out(f"{app.get('name', args.name)} {done}: {statuses_text(app)}")
    return 0


def _apps_commands(api: AdminClient, args: argparse.Namespace) -> int:
    data = api.list_commands(args.name)
    if args.json:
        print_json(data)
        return 0
    commands = data["commands"]
    if not commands:
        out(f"{args.name} offers no maintenance command")
        return 0
    out(table(["COMMAND", "DESCRIPTION"], [[c["name"], c["description"]] for c in commands]))
    return 0


def _apps_run(api: AdminClient, args: argparse.Namespace) -> int:
    command_args = json_pairs(args.arg, "--arg", "dry_run=true")
    try:
        app = api.run_command(args.name, args.command, command_args, timeout=args.timeout)
    except ApiError as exc:
        print_api_error(exc, args.json)
        return EXIT_FAILED
    if args.json:
        print_json(app)
    else:
        out(f"{app.get('name', args.name)} ran {args.command}: {statuses_text(app)}")
    return 0


def _apps_start(api: AdminClient, args: argparse.Namespace) -> int:
    return _apps_command(api, args, "start")


def _apps_stop(api: AdminClient, args: argparse.Namespace) -> int:
    return _apps_command(api, args, "stop")


def _apps_move(api: AdminClient, args: argparse.Namespace) -> int:
    return _apps_command(api, args, "move")


def confirm_removal(api: AdminClient, name: str, drop_database: bool) -> bool:
    """Ask on the terminal; dropping the database needs the app's name typed back."""
    app = api.get_app(name)  # an unknown app fails here, before any question
    where = ", ".join(app.get("environments") or []) or "no environment"
    err(f"app {name} ({app.get('title', name)}) on {where}, now {statuses_text(app)}")
    if drop_database:
        prompt = f"remove {name} and DROP ITS DATABASE (all its data)? type the app's name: "
    else:
        prompt = f"remove {name} (its database is kept)? [y/N] "
    sys.stderr.write(prompt)
    sys.stderr.flush()
    answer = sys.stdin.readline().strip()
    if drop_database:
        return answer == name
    return answer.lower() in ("y", "yes")


def _apps_rm(api: AdminClient, args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"refusing to remove {args.name} without confirmation: stdin is not a "
                "terminal; pass --yes to remove it anyway"
            )
        if not confirm_removal(api, args.name, args.drop_database):
            err("nocosup: not removed")
            return EXIT_FAILED
    result = api.delete_app(args.name, args.drop_database, args.force)
    if args.json:
        print_json(result)
    elif result.get("database_dropped"):
        out(f"removed {result.get('name', args.name)} and dropped its database")
    else:
        out(f"removed {result.get('name', args.name)} (database kept)")
    return 0


def _apps_domains(api: AdminClient, args: argparse.Namespace) -> int:
    """Show an app's custom domains, or replace them (``--set``, ``--clear``)."""
    if args.set is not None and args.clear:
        raise UsageError("--set and --clear contradict each other")
    if args.set is None and not args.clear:
        app = api.get_app(args.name)
    else:
        app = api.update_app(args.name, {"domains": [] if args.clear else args.set})
    if args.json:
        print_json(app)
    else:
        out("\n".join(app.get("domains") or []) or f"{app.get('name', args.name)} has no domains")
    return 0


def _envs_rm(api: AdminClient, args: argparse.Namespace) -> int:
    result = api.delete_environment(args.name, args.force)
    if args.json:
        print_json(result)
    else:
        apps = result.get("apps") or []
        still = f" ({len(apps)} apps still list it: {', '.join(apps)})" if apps else ""
        out(f"removed environment {result.get('name', args.name)}{still}")
    return 0


def _envs_list(api: AdminClient, args: argparse.Namespace) -> int:
    data = api.list_environments()
    if args.json:
        print_json(data)
        return 0
    rows = [
        [
            e.get("name", "-"),
            e.get("status", "-"),
            e.get("version") or "-",
            e.get("url") or "-",
            str(len(e.get("instances") or [])),
            when(e.get("last_heartbeat_at")),
        ]
        for e in data.get("environments", [])
    ]
    out(table(["NAME", "STATUS", "VERSION", "URL", "INSTANCES", "LAST HEARTBEAT"], rows))
    return 0


def _client_command(
    handler: Callable[[AdminClient, argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """Run ``handler`` with a client, turning every expected failure into a message."""

    def run(args: argparse.Namespace) -> int:
        try:
            config = ClientConfig.resolve(args.url, args.token, os.environ)
            with AdminClient(config) as api:
                return handler(api, args)
        except (ConfigError, UsageError) as exc:
            err(f"nocosup: {exc}")
            return EXIT_USAGE
        except ApiError as exc:
            print_api_error(exc, args.json)
            return EXIT_FAILED
        except ConnectionFailed as exc:
            err(
                f"nocosup: cannot connect to {exc.url} ({exc.reason}); is 'nocosup serve' "
                "running there? set NOCOSUP_URL or pass --url"
            )
            return EXIT_FAILED
        except (RequestTimedOut, Failure) as exc:
            err(f"nocosup: {exc}")
            return EXIT_FAILED
        except KeyboardInterrupt:
            err("\nnocosup: interrupted")
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader (e.g. `| head`) went away: not an error worth a traceback.
            _silence_stdout()
            return EXIT_FAILED

    return run


# --- the parser ---------------------------------------------------------------------------


def _client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help="supervisor URL (default: $NOCOSUP_URL, else http://127.0.0.1:8000)"
    )
    common.add_argument(
        "--token",
        help="admin token (default: $NOCOSUP_ADMIN_TOKEN, better: flags show in ps)",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")
    return common


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is from 1 to 65535; got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nocosup",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nocosup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    serve = sub.add_parser("serve", help="run the supervisor or a worker (APP_MODE) under uvicorn")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port to bind (default 8000)")
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--http",
        default="auto",
        choices=["auto", "h11", "httptools"],
        help="HTTP/1.1 parser (default auto: httptools when installed)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port: replicas of one environment (APP_MODE=worker only)",
    )
    serve.add_argument("--forwarded-allow-ips", help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)

    common = [_client_options()]
    apps = sub.add_parser("apps", help="list, create, show, start, stop, move and remove apps")
    apps_sub = apps.add_subparsers(dest="action", required=True, metavar="action")

    p = apps_sub.add_parser("list", parents=common, help="table of apps and their statuses")
    p.add_argument("--status", help="only apps with this status on one of their environments")
    p.add_argument("--env", dest="environment", metavar="ENV", help="only apps on ENV")
    p.add_argument("--prefix", help="only apps whose name starts with PREFIX")
    p.add_argument(
        "--limit", type=_positive_int, metavar="N", help="show at most N apps (default: all)"
    )
    p.set_defaults(func=_client_command(_apps_list))

    p = apps_sub.add_parser("create", parents=common, help="register an app (and its database)")
    p.add_argument("name", help="lowercase letters, digits, '_' or '-'; at most 40")
    p.add_argument("--title", help="display title (default: the name)")
    p.add_argument(
        "--env",
        dest="environments",
        action="extend",
        nargs="+",
        metavar="ENV",
        help="environment(s) to run it in (default: the least loaded online one)",
    )
    p.add_argument("--start-mode", choices=START_MODES, help="default on_first_request")
    p.add_argument(
        "--template",
        metavar="NAME",
        help="an installed app template (GET /api/templates); default: the default factory",
    )
    # the server checks both against its provisioners (plugins may add kinds)
    p.add_argument(
        "--db-conn-type",
        metavar="TYPE",
        help="new_database (default) or new_schema (postgres), or a plugin provisioner's",
    )
    p.add_argument(
        "--db-provisioner",
        metavar="NAME",
        help="the tenant-database provisioner: sqlite or postgres (default: DB_DIALECT's)",
    )
    p.add_argument(
        "--domain",
        dest="domains",
        action="extend",
        nargs="+",
        metavar="HOST",
        help="custom domain(s) served by this app at its root, e.g. crm.example.com",
    )
    p.add_argument(
        "--option",
        action="append",
        metavar="KEY=JSON_VALUE",
        help="an app option, the value in JSON (repeatable): --option size=3",
    )
    p.set_defaults(func=_client_command(_apps_create))

    p = apps_sub.add_parser("show", parents=common, help="every field of one app")
    p.add_argument("name")
    p.set_defaults(func=_client_command(_apps_show))

    for verb, handler, what in (
        ("start", _apps_start, "start an app and wait until it runs everywhere"),
        ("stop", _apps_stop, "stop an app and wait until it is stopped everywhere"),
        ("move", _apps_move, "move an app to another environment (shared PostgreSQL data)"),
    ):
        p = apps_sub.add_parser(verb, parents=common, help=what)
        p.add_argument("name")
        if verb == "move":
            p.add_argument(
                "--to", required=True, metavar="ENV", help="the environment the app ends on"
            )
        p.add_argument(
            "--timeout",
            type=_positive,
            default=120.0,
            metavar="SECONDS",
            help="give up waiting after this long (default 120); the server carries on",
        )
        p.set_defaults(func=_client_command(handler))

    p = apps_sub.add_parser(
        "commands", parents=common, help="the maintenance commands an app offers"
    )
    p.add_argument("name")
    p.set_defaults(func=_client_command(_apps_commands))

    p = apps_sub.add_parser(
        "run", parents=common, help="run a maintenance command on an app, everywhere"
    )
    p.add_argument("name")
    p.add_argument("command", help="one of: nocosup apps commands NAME")
    p.add_argument("--arg", action="append", metavar="KEY=JSON", help="an argument of the command")
    p.add_argument(
        "--timeout",
        type=_positive,
        default=600.0,
        metavar="SECONDS",
        help="give up waiting after this long (default 600); the server carries on",
    )
    p.set_defaults(func=_client_command(_apps_run))

    p = apps_sub.add_parser("rm", parents=common, help="stop and remove an app")
    p.add_argument("name")
    p.add_argument(
        "--drop-database", action="store_true", help="also drop its database (its data is lost)"
    )
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--force",
        action="store_true",
        help="forget it even where an environment could not remove it (offline for good)",
    )
    p.set_defaults(func=_client_command(_apps_rm))

    p = apps_sub.add_parser("domains", parents=common, help="show or set an app's custom domains")
    p.add_argument("name")
    p.add_argument(
        "--set", nargs="+", metavar="HOST", help="replace the app's domains with these host names"
    )
    p.add_argument("--clear", action="store_true", help="remove every domain of the app")
    p.set_defaults(func=_client_command(_apps_domains))

    envs = sub.add_parser("envs", help="list and remove the runtime environments")
    envs_sub = envs.add_subparsers(dest="action", required=True, metavar="action")
    p = envs_sub.add_parser("list", parents=common, help="table of environments")
    p.set_defaults(func=_client_command(_envs_list))
    p = envs_sub.add_parser("rm", parents=common, help="forget an environment that is gone")
    p.add_argument("name")
    p.add_argument(
        "--force",
        action="store_true",
        help="remove it even while it is online or apps still list it",
    )
    p.set_defaults(func=_client_command(_envs_rm))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
