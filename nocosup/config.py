"""Settings read from environment variables, validated once at start.

Every variable nocosup reads is declared in :data:`VARIABLES`; nothing else in the
package calls ``os.environ``. A bad value raises :class:`ConfigError` whose message
names the variable and the values it allows, so ``nocosup serve`` can print it and exit.
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nocosup.errors import ConfigError
from nocosup.redisurl import (
    SENTINEL_SCHEMES,
    SERVICE_NAME,
    is_sentinel_url,
    mask_url,
    parse_sentinel_url,
    parse_sentinels,
    through_sentinels,
)
from nocosup.validation import ENV_NAME

MODES = ("supervisor", "worker")
DISCOVERY_ADAPTERS = ("local", "remote")
PROCESS_ADAPTERS = ("local", "remote")
COMMAND_ADAPTERS = ("local", "redis")
DB_DIALECTS = ("sqlite", "postgres")
# Matched with fullmatch: a "$" anchor would let a trailing newline through.
_ENV_NAME = ENV_NAME
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST = re.compile(r"([A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")
#: An upstream host may hold '_' (Docker Compose service names such as worker_a).
_UPSTREAM_HOST = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,252}|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")
#: The admin token guards every app and its data: shorter ones are refused at start.
MIN_ADMIN_TOKEN = 32
#: The cluster secret signs every control-plane message: shorter ones are refused at start.
MIN_CLUSTER_SECRET = 32
#: App names are at most 40 characters and tenant databases were named ``{DB_DATABASE}_{app}``
#: (now ``{DB_DATABASE}_app_{app}``: an app whose name would not fit is refused at create);
#: PostgreSQL truncates identifiers past 63 bytes, so DB_DATABASE must leave room.
MAX_DB_DATABASE_LEN = 63 - 1 - 40


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, default and a one-line meaning."""

    name: str
    default: str | None
    help: str
    choices: tuple[str, ...] = ()


VARIABLES: tuple[Variable, ...] = (
    Variable("APP_MODE", "supervisor", "Role of this process.", MODES),
    Variable(
        "APP_DISCOVERY_ADAPTER",
        "local",
        "Where apps and environments are looked up.",
        DISCOVERY_ADAPTERS,
    ),
    Variable(
        "APP_PROCESS_ADAPTER",
        "local",
        "Where apps run: in this process or on workers.",
        PROCESS_ADAPTERS,
    ),
    Variable(
        "APP_COMMAND_ADAPTER", "local", "How start/stop/remove commands travel.", COMMAND_ADAPTERS
    ),
    Variable(
        "APP_COMMAND_ADPATER",
        None,
        "Misspelling of APP_COMMAND_ADAPTER in the reference docs; accepted as an alias.",
        COMMAND_ADAPTERS,
    ),
    Variable(
        "APP_SUPERVISOR_REDIS_URL",
        None,
        "Redis holding the config cache and heartbeats: redis://, rediss:// (TLS), unix:// or "
        "redis+sentinel://[user[:password]@]host[:port][,...]/master[/db].",
    ),
    Variable(
        "APP_COMMAND_REDIS_URL",
        None,
        "Redis carrying command streams (defaults to APP_SUPERVISOR_REDIS_URL).",
    ),
    Variable("ENVIRONMENT_NAME", "local", "Name of the environment this process belongs to."),
    Variable("ENVIRONMENT_URL", None, "Public URL of this environment."),
    Variable(
        "ENVIRONMENT_PROXY_URL",
        None,
        "URL the supervisor uses to reach this environment (defaults to ENVIRONMENT_URL).",
    ),
    Variable("DB_DIALECT", "sqlite", "Database of the registry and of tenant apps.", DB_DIALECTS),
    Variable("DB_HOST", "127.0.0.1", "PostgreSQL host."),
    Variable("DB_PORT", "5432", "PostgreSQL port."),
    Variable(
        "DB_DATABASE",
        "nocosup",
        "Registry database name; tenant databases are named {DB_DATABASE}_app_{app}.",
    ),
    Variable("DB_USER", "postgres", "PostgreSQL user."),
    Variable("DB_PASSWORD", "", "PostgreSQL password."),
    Variable(
        "NOCOSUP_STORAGE_DIR",
        "./storage",
        "Directory for SQLite files, the generated admin token and app files.",
    ),
    Variable(
        "NOCOSUP_ADMIN_TOKEN",
        None,
        "Bearer token for the admin API (at least 32 characters); generated and kept in the "
        "storage dir if unset.",
    ),
    Variable(
        "NOCOSUP_SESSION_TTL",
        "28800",
        "Seconds a web page session (the login cookie) lasts before it must sign in again.",
    ),
    Variable(
        "NOCOSUP_ADMIN_HOST",
        None,
        "Host (name[:port]) that alone serves the admin API and web page; others get 404.",
    ),
    Variable(
        "NOCOSUP_TRUSTED_PROXIES",
        None,
        "Comma-separated IPs/CIDRs of proxies whose X-Forwarded-Proto/-For nocosup honours.",
    ),
    Variable(
        "NOCOSUP_LOGIN_FAILURES",
        "10",
        "Failed logins a client address may make per minute before 429 TOO_MANY_LOGINS.",
    ),
    Variable("NOCOSUP_APP_FACTORY", None, "module:callable building each tenant ASGI app."),
    Variable(
        "NOCOSUP_BOOT_WAIT",
        "10",
        "Seconds a request waits for its app to boot before 503 APP_INITIALIZING.",
    ),
    Variable("NOCOSUP_REDIS_PREFIX", "nocosup", "Prefix of every Redis key."),
    Variable(
        "NOCOSUP_LOAD_PLUGINS",
        None,
        "Comma-separated third-party plugins to load; empty loads none, unset loads all "
        "(built-in plugins load unless disabled).",
    ),
    Variable(
        "NOCOSUP_DISABLE_PLUGINS",
        None,
        "Comma-separated plugins not to load, built-in ones included (e.g. nocosup_webui).",
    ),
    Variable(
        "NOCOSUP_TRACE_HOOKS",
        "0",
        "Log every hook call with its arguments and results.",
        ("0", "1"),
    ),
    Variable(
        "NOCOSUP_URL",
        "http://127.0.0.1:8000",
        "Supervisor URL the `nocosup apps|envs` CLI talks to (read by the CLI only).",
    ),
    Variable(
        "NOCOSUP_STOP_GRACE",
        "10",
        "Seconds a stopping app waits for its in-flight requests to finish.",
    ),
    Variable(
        "NOCOSUP_HEARTBEAT_INTERVAL",
        "10",
        "Seconds between a worker's heartbeats; its key lives 3 intervals.",
    ),
    Variable(
        "NOCOSUP_COMMAND_TIMEOUT",
        "60",
        "Seconds the supervisor waits for workers to answer a command (504 COMMAND_TIMEOUT).",
    ),
    Variable(
        "NOCOSUP_LOCK_TTL",
        "15",
        "Seconds an app's startup lock lives unless renewed (renewed every third of it).",
    ),
    Variable(
        "NOCOSUP_PROXY_TIMEOUT",
        "300",
        "Seconds the proxy waits for a worker's answer to start, and between its body chunks "
        "(504 UPSTREAM_TIMEOUT); a stream silent longer is cut.",
    ),
    Variable(
        "NOCOSUP_PROXY_FAST_PATH",
        "1",
        "1: a supervisor in multi-environment mode answers plain proxied requests below "
        "ASGI (one parse, one write of head and small body); 0: every request goes through "
        "ASGI.",
        ("0", "1"),
    ),
    Variable(
        "NOCOSUP_PROXY_LEAN_LANE",
        "1",
        "1: on the fast path, a plain GET or HEAD whose head arrives whole is forwarded "
        "and answered with a handful of Python calls (the lean lane); 0: such requests "
        "take the express lane.",
        ("0", "1"),
    ),
    Variable(
        "NOCOSUP_MAX_BODY_SIZE",
        "104857600",
        "Bytes a tenant request body may hold unless the app's options.maxBodySize says "
        "otherwise (413 PAYLOAD_TOO_LARGE).",
    ),
    Variable(
        "NOCOSUP_MAX_HEADER_SIZE",
        "65536",
        "Bytes the request line and headers of one request may take (431 HEADERS_TOO_LARGE).",
    ),
    Variable(
        "NOCOSUP_MAX_WS_MESSAGE",
        "1048576",
        "Bytes one WebSocket message may hold, in either direction (close 1009).",
    ),
    Variable(
        "NOCOSUP_MAX_CONNECTIONS",
        "1000",
        "Connections one server process serves at once; requests past it get 503.",
    ),
    Variable(
        "NOCOSUP_HEADER_TIMEOUT",
        "30",
        "Seconds a connection may take to send a complete request head (and stay idle "
        "before its first request); then it is closed.",
    ),
    Variable(
        "NOCOSUP_REDIS_SENTINELS",
        None,
        "Sentinels (host[:port],...) through which every redis:// URL reaches its master; "
        "with NOCOSUP_REDIS_SENTINEL_MASTER.",
    ),
    Variable(
        "NOCOSUP_REDIS_SENTINEL_MASTER",
        None,
        "Name of the master the sentinels watch (the service in a redis+sentinel:// URL).",
    ),
    Variable(
        "NOCOSUP_REDIS_SENTINEL_PASSWORD",
        None,
        "Password of the sentinels themselves, when they require one (requirepass).",
    ),
    Variable(
        "NOCOSUP_IDLE_TIMEOUT",
        "0",
        "Seconds without traffic after which an app goes idle (stopped until its next "
        "request) unless its options.idleTimeout says otherwise; 0 never.",
    ),
    Variable(
        "NOCOSUP_FAILOVER_AFTER",
        "60",
        "Seconds every environment of an app with options.failover must have been offline "
        "(since its last heartbeat) before the app is moved to an online one.",
    ),
    Variable(
        "NOCOSUP_MAX_RUNNING_APPS",
        "0",
        "Apps one process runs at once; a boot past it puts the least recently used idle "
        "first (503 APP_CAPACITY when none can go); 0 no limit.",
    ),
    Variable(
        "NOCOSUP_BOOT_CONCURRENCY",
        "4",
        "Apps one process boots at a time; further boots queue in order (their wait counts "
        "against NOCOSUP_BOOT_WAIT).",
    ),
    Variable(
        "NOCOSUP_METRICS_TOKEN",
        None,
        "Token that lets a scraper read GET /metrics (and nothing else); the admin token "
        "works too.",
    ),
    Variable(
        "NOCOSUP_DB_CONNECT_TIMEOUT",
        "5",
        "Seconds to open a PostgreSQL connection (registry and tenant databases) before "
        "503 DATABASE_UNAVAILABLE.",
    ),
    Variable(
        "NOCOSUP_DB_STATEMENT_TIMEOUT",
        "30",
        "Seconds one SQL statement may run (client and server side; the SQLite busy "
        "timeout too) before 503 DATABASE_UNAVAILABLE.",
    ),
    Variable(
        "NOCOSUP_DB_MAX_CONNECTIONS",
        "50",
        "PostgreSQL connections all tenant databases of one process may hold together "
        "(the registry's own pool is not counted).",
    ),
    Variable(
        "NOCOSUP_DB_POOL_IDLE",
        "60",
        "Seconds a tenant database connection may sit unused before it is closed.",
    ),
    Variable(
        "NOCOSUP_DB_BUDGET_WAIT",
        "5",
        "Seconds a query waits for a connection when NOCOSUP_DB_MAX_CONNECTIONS are all "
        "busy before 503 DATABASE_UNAVAILABLE.",
    ),
    Variable(
        "NOCOSUP_INSTANCE_ID",
        None,
        "Name of this process among the replicas of its environment (default: random).",
    ),
    Variable(
        "NOCOSUP_CLUSTER_SECRET",
        None,
        "Shared secret (at least 32 characters) signing every control-plane message in "
        "Redis; unset, every Redis writer is trusted.",
    ),
    Variable(
        "NOCOSUP_ALLOWED_UPSTREAMS",
        None,
        "Comma-separated hosts, host:port or IPs/CIDRs the supervisor may proxy to; unset "
        "allows any environment URL.",
    ),
    Variable(
        "NOCOSUP_TENANT_DB_PREFIX",
        None,
        "Tenant databases are named {prefix}_{app} (schema mode: database {prefix}); "
        "defaults to DB_DATABASE; workers must use the supervisor's.",
    ),
    Variable(
        "NOCOSUP_REDIS_CA_FILE",
        None,
        "CA certificate file (PEM) that verifies Redis servers reached with rediss:// URLs.",
    ),
)
_BY_NAME = {v.name: v for v in VARIABLES}


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return _BY_NAME[name].default
    return value.strip()


def _text(env: Mapping[str, str], name: str) -> str:
    """A variable whose default is a string, so it always has a value."""
    value = _get(env, name)
    assert value is not None, f"{name} needs a default"
    return value


def _choice(env: Mapping[str, str], name: str) -> str:
    value = _get(env, name)
    allowed = _BY_NAME[name].choices
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _number(
    env: Mapping[str, str], name: str, cast: Callable[[str], Any], low: float, high: float
) -> Any:
    raw = _get(env, name)
    try:
        value = cast(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = None
    if value is None or not low <= value <= high:
        raise ConfigError(f"{name} must be a number from {low:g} to {high:g}; got {raw!r}")
    return value


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = _get(env, name)
    if value is None:
        return None
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in schemes:
        raise ConfigError(
            f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}; "
            f"got {mask_url(value)!r}"
        )
    return value.rstrip("/")


def _pattern(env: Mapping[str, str], name: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = _get(env, name)
    if value is not None and not pattern.fullmatch(value):
        raise ConfigError(f"{name} must be {what}; got {value!r}")
    return value


def _parse(env: Mapping[str, str]) -> dict[str, Any]:
    command = _choice(env, "APP_COMMAND_ADAPTER")
    if not (env.get("APP_COMMAND_ADAPTER") or "").strip() and env.get("APP_COMMAND_ADPATER"):
        command = _choice(env, "APP_COMMAND_ADPATER")
    db_database = _pattern(
        env,
        "DB_DATABASE",
        _DB_NAME,
        "letters, digits and underscores, not starting with a digit",
    )
    assert db_database is not None
    if len(db_database) > MAX_DB_DATABASE_LEN:
        raise ConfigError(
            f"DB_DATABASE must be at most {MAX_DB_DATABASE_LEN} characters so that tenant "
            f"databases ({{DB_DATABASE}}_{{app}}) fit PostgreSQL's 63-byte names; "
            f"got {db_database!r}"
        )
    load = env.get("NOCOSUP_LOAD_PLUGINS", _BY_NAME["NOCOSUP_LOAD_PLUGINS"].default)
    return {
        "mode": _choice(env, "APP_MODE"),
        "discovery_adapter": _choice(env, "APP_DISCOVERY_ADAPTER"),
        "process_adapter": _choice(env, "APP_PROCESS_ADAPTER"),
        "command_adapter": command,
        **_redis(env),
        "environment_name": _pattern(
            env, "ENVIRONMENT_NAME", _ENV_NAME, "1-63 letters, digits, '_', '.' or '-'"
        ),
        "environment_url": _url(env, "ENVIRONMENT_URL", ("http", "https")),
        "environment_proxy_url": _url(env, "ENVIRONMENT_PROXY_URL", ("http", "https")),
        "db_dialect": _choice(env, "DB_DIALECT"),
        "db_host": _text(env, "DB_HOST"),
        "db_port": _number(env, "DB_PORT", int, 1, 65535),
        "db_database": db_database,
        "db_user": _text(env, "DB_USER"),
        # taken as it is, not trimmed (docs/configuration.md)
        "db_password": env.get("DB_PASSWORD", _BY_NAME["DB_PASSWORD"].default),
        "storage_dir": Path(_text(env, "NOCOSUP_STORAGE_DIR")),
        "admin_token": _admin_token(env),
        "session_ttl": _number(env, "NOCOSUP_SESSION_TTL", float, 60, 30 * 86400),
        "admin_host": _admin_host(env),
        "trusted_proxies": _networks(env, "NOCOSUP_TRUSTED_PROXIES"),
        "login_failures": _number(env, "NOCOSUP_LOGIN_FAILURES", int, 1, 100000),
        "app_factory": _pattern(env, "NOCOSUP_APP_FACTORY", _FACTORY, "module:callable"),
        "boot_wait": _number(env, "NOCOSUP_BOOT_WAIT", float, 0, 3600),
        "redis_prefix": _pattern(
            env, "NOCOSUP_REDIS_PREFIX", _PREFIX, "1-64 letters, digits or _ . : -"
        ),
        "load_plugins": None if load is None else _names(load),
        "disable_plugins": _names(env.get("NOCOSUP_DISABLE_PLUGINS")),
        "trace_hooks": _choice(env, "NOCOSUP_TRACE_HOOKS") == "1",
        "stop_grace": _number(env, "NOCOSUP_STOP_GRACE", float, 0, 3600),
        "heartbeat_interval": _number(env, "NOCOSUP_HEARTBEAT_INTERVAL", float, 0.1, 3600),
        "command_timeout": _number(env, "NOCOSUP_COMMAND_TIMEOUT", float, 0.1, 3600),
        "lock_ttl": _number(env, "NOCOSUP_LOCK_TTL", float, 0.3, 3600),
        "proxy_timeout": _number(env, "NOCOSUP_PROXY_TIMEOUT", float, 0.1, 86400),
        "proxy_fast_path": _choice(env, "NOCOSUP_PROXY_FAST_PATH") == "1",
        "proxy_lean_lane": _choice(env, "NOCOSUP_PROXY_LEAN_LANE") == "1",
        "max_body_size": _number(env, "NOCOSUP_MAX_BODY_SIZE", int, 1, 1 << 36),
        "max_header_size": _number(env, "NOCOSUP_MAX_HEADER_SIZE", int, 1024, 1 << 24),
        "max_ws_message": _number(env, "NOCOSUP_MAX_WS_MESSAGE", int, 1024, 1 << 30),
        "max_connections": _number(env, "NOCOSUP_MAX_CONNECTIONS", int, 1, 1_000_000),
        "header_timeout": _number(env, "NOCOSUP_HEADER_TIMEOUT", float, 0.1, 3600),
        "idle_timeout": _number(env, "NOCOSUP_IDLE_TIMEOUT", float, 0, 30 * 86400),
        "max_running_apps": _number(env, "NOCOSUP_MAX_RUNNING_APPS", int, 0, 1_000_000),
        "failover_after": _number(env, "NOCOSUP_FAILOVER_AFTER", float, 0.1, 30 * 86400),
        "boot_concurrency": _number(env, "NOCOSUP_BOOT_CONCURRENCY", int, 1, 10_000),
        "metrics_token": _metrics_token(env),
        "db_connect_timeout": _number(env, "NOCOSUP_DB_CONNECT_TIMEOUT", float, 0.1, 600),
        "db_statement_timeout": _number(env, "NOCOSUP_DB_STATEMENT_TIMEOUT", float, 0.1, 86400),
        "db_max_connections": _number(env, "NOCOSUP_DB_MAX_CONNECTIONS", int, 1, 100_000),
        "db_pool_idle": _number(env, "NOCOSUP_DB_POOL_IDLE", float, 0.1, 86400),
        "db_budget_wait": _number(env, "NOCOSUP_DB_BUDGET_WAIT", float, 0, 600),
        "cluster_secret": _cluster_secret(env),
        "allowed_upstreams": _upstreams(env, "NOCOSUP_ALLOWED_UPSTREAMS"),
        "tenant_db_prefix": _tenant_db_prefix(env),
        "redis_ca_file": _file(env, "NOCOSUP_REDIS_CA_FILE"),
        **_instance(env),
    }


def _redis(env: Mapping[str, str]) -> dict[str, Any]:
    """The Redis URLs and Sentinel settings, each checked as it will be used."""
    sentinels_raw = _get(env, "NOCOSUP_REDIS_SENTINELS")
    master = _pattern(
        env, "NOCOSUP_REDIS_SENTINEL_MASTER", SERVICE_NAME, "a master name (letters, digits, _ . -)"
    )
    if bool(sentinels_raw) != bool(master):
        raise ConfigError(
            "NOCOSUP_REDIS_SENTINELS and NOCOSUP_REDIS_SENTINEL_MASTER go together: set both "
            "or neither"
        )
    sentinels = parse_sentinels(sentinels_raw, "NOCOSUP_REDIS_SENTINELS") if sentinels_raw else ()
    out: dict[str, Any] = {
        "redis_sentinels": sentinels,
        "redis_sentinel_master": master,
        "redis_sentinel_password": _get(env, "NOCOSUP_REDIS_SENTINEL_PASSWORD"),
    }
    schemes = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)
    for variable, key in (
        ("APP_SUPERVISOR_REDIS_URL", "supervisor_redis_url"),
        ("APP_COMMAND_REDIS_URL", "command_redis_url"),
    ):
        url = out[key] = _url(env, variable, schemes)
        if url is None:
            continue
        if is_sentinel_url(url):
            parse_sentinel_url(url, variable)
        elif master is not None:
            through_sentinels(url, sentinels, master, variable)
    return out


def _admin_token(env: Mapping[str, str]) -> str | None:
    token = _get(env, "NOCOSUP_ADMIN_TOKEN")
    check_admin_token(token, "NOCOSUP_ADMIN_TOKEN")
    return token


def check_admin_token(token: str | None, where: str) -> None:
    """A token shorter than :data:`MIN_ADMIN_TOKEN` characters is a ConfigError."""
    if token is not None and len(token) < MIN_ADMIN_TOKEN:
        raise ConfigError(
            f"{where} must be at least {MIN_ADMIN_TOKEN} characters (got {len(token)}); "
            "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


def _metrics_token(env: Mapping[str, str]) -> str | None:
    token = _get(env, "NOCOSUP_METRICS_TOKEN")
    check_admin_token(token, "NOCOSUP_METRICS_TOKEN")  # the same length rule
    return token


def _file(env: Mapping[str, str], name: str) -> str | None:
    value = _get(env, name)
    if value is not None and not os.path.isfile(value):
        raise ConfigError(f"{name} must name an existing file; got {value!r}")
    return value


def _cluster_secret(env: Mapping[str, str]) -> str | None:
    secret = _get(env, "NOCOSUP_CLUSTER_SECRET")
    if secret is not None and len(secret) < MIN_CLUSTER_SECRET:
        raise ConfigError(
            f"NOCOSUP_CLUSTER_SECRET must be at least {MIN_CLUSTER_SECRET} characters (got "
            f"{len(secret)}); make one with: openssl rand -hex 32"
        )
    return secret


def _tenant_db_prefix(env: Mapping[str, str]) -> str | None:
    value = _pattern(
        env,
        "NOCOSUP_TENANT_DB_PREFIX",
        _DB_NAME,
        "letters, digits and underscores, not starting with a digit",
    )
    if value is not None and len(value) > MAX_DB_DATABASE_LEN:
        raise ConfigError(
            f"NOCOSUP_TENANT_DB_PREFIX must be at most {MAX_DB_DATABASE_LEN} characters so that "
            f"tenant databases ({{prefix}}_{{app}}) fit PostgreSQL's 63-byte names; got {value!r}"
        )
    return value


@dataclass(frozen=True)
class Upstream:
    """One entry of NOCOSUP_ALLOWED_UPSTREAMS: a network, or a host name (lower case),
    with a port when the entry names one."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    host: str | None
    port: int | None = None


def _upstreams(env: Mapping[str, str], name: str) -> tuple[Upstream, ...]:
    out: list[Upstream] = []
    for item in _names(_get(env, name)):
        try:
            out.append(Upstream(ipaddress.ip_network(item, strict=False), None))
            continue
        except ValueError:
            pass
        match = _UPSTREAM_HOST.fullmatch(item)
        port = int(item.rsplit(":", 1)[1]) if match and match.group(2) else None
        if match is None or (port is not None and not 1 <= port <= 65535):
            raise ConfigError(
                f"{name} must be comma-separated host names, host:port, IP addresses or "
                f"CIDRs; got {item!r}"
            )
        host = match.group(1).strip("[]").lower()
        try:
            out.append(Upstream(ipaddress.ip_network(host), None, port))
        except ValueError:
            out.append(Upstream(None, host, port))
    return tuple(out)


def _admin_host(env: Mapping[str, str]) -> str | None:
    value = _pattern(env, "NOCOSUP_ADMIN_HOST", _HOST, "a host name, optionally with :port")
    return value.lower() if value else None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(env: Mapping[str, str], name: str) -> tuple[Network, ...]:
    out: list[Network] = []
    for item in _names(_get(env, name)):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} must be comma-separated IP addresses or CIDRs; got {item!r}"
            ) from None
    return tuple(out)


def _names(value: str | None) -> tuple[str, ...]:
    """A comma-separated list of names, blanks dropped."""
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _instance(env: Mapping[str, str]) -> dict[str, str]:
    value = _pattern(env, "NOCOSUP_INSTANCE_ID", _ENV_NAME, "1-63 letters, digits, '_', '.' or '-'")
    return {"instance_id": value} if value else {}


#: The Settings field defaults: VARIABLES' defaults, parsed as any environment is.
_DEFAULTS = _parse({})


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one nocosup process.

    Every default is the parsed default of its variable in :data:`VARIABLES`, so
    ``Settings()`` is ``Settings.from_env({})`` (but for the random ``instance_id``).
    """

    mode: str = _DEFAULTS["mode"]
    discovery_adapter: str = _DEFAULTS["discovery_adapter"]
    process_adapter: str = _DEFAULTS["process_adapter"]
    command_adapter: str = _DEFAULTS["command_adapter"]
    supervisor_redis_url: str | None = _DEFAULTS["supervisor_redis_url"]
    command_redis_url: str | None = _DEFAULTS["command_redis_url"]
    redis_sentinels: tuple[tuple[str, int], ...] = _DEFAULTS["redis_sentinels"]
    redis_sentinel_master: str | None = _DEFAULTS["redis_sentinel_master"]
    redis_sentinel_password: str | None = _DEFAULTS["redis_sentinel_password"]
    environment_name: str = _DEFAULTS["environment_name"]
    environment_url: str | None = _DEFAULTS["environment_url"]
    environment_proxy_url: str | None = _DEFAULTS["environment_proxy_url"]
    db_dialect: str = _DEFAULTS["db_dialect"]
    db_host: str = _DEFAULTS["db_host"]
    db_port: int = _DEFAULTS["db_port"]
    db_database: str = _DEFAULTS["db_database"]
    db_user: str = _DEFAULTS["db_user"]
    db_password: str = _DEFAULTS["db_password"]
    storage_dir: Path = _DEFAULTS["storage_dir"]
    admin_token: str | None = _DEFAULTS["admin_token"]
    metrics_token: str | None = _DEFAULTS["metrics_token"]
    session_ttl: float = _DEFAULTS["session_ttl"]
    admin_host: str | None = _DEFAULTS["admin_host"]
    trusted_proxies: tuple[Network, ...] = _DEFAULTS["trusted_proxies"]
    login_failures: int = _DEFAULTS["login_failures"]
    app_factory: str | None = _DEFAULTS["app_factory"]
    boot_wait: float = _DEFAULTS["boot_wait"]
    redis_prefix: str = _DEFAULTS["redis_prefix"]
    load_plugins: tuple[str, ...] | None = _DEFAULTS["load_plugins"]
    disable_plugins: tuple[str, ...] = _DEFAULTS["disable_plugins"]
    trace_hooks: bool = _DEFAULTS["trace_hooks"]
    stop_grace: float = _DEFAULTS["stop_grace"]
    heartbeat_interval: float = _DEFAULTS["heartbeat_interval"]
    command_timeout: float = _DEFAULTS["command_timeout"]
    lock_ttl: float = _DEFAULTS["lock_ttl"]
    proxy_timeout: float = _DEFAULTS["proxy_timeout"]
    proxy_fast_path: bool = _DEFAULTS["proxy_fast_path"]
    proxy_lean_lane: bool = _DEFAULTS["proxy_lean_lane"]
    max_body_size: int = _DEFAULTS["max_body_size"]
    max_header_size: int = _DEFAULTS["max_header_size"]
    max_ws_message: int = _DEFAULTS["max_ws_message"]
    max_connections: int = _DEFAULTS["max_connections"]
    header_timeout: float = _DEFAULTS["header_timeout"]
    idle_timeout: float = _DEFAULTS["idle_timeout"]
    max_running_apps: int = _DEFAULTS["max_running_apps"]
    failover_after: float = _DEFAULTS["failover_after"]
    boot_concurrency: int = _DEFAULTS["boot_concurrency"]
    db_connect_timeout: float = _DEFAULTS["db_connect_timeout"]
    db_statement_timeout: float = _DEFAULTS["db_statement_timeout"]
    db_max_connections: int = _DEFAULTS["db_max_connections"]
    db_pool_idle: float = _DEFAULTS["db_pool_idle"]
    db_budget_wait: float = _DEFAULTS["db_budget_wait"]
    cluster_secret: str | None = _DEFAULTS["cluster_secret"]
    allowed_upstreams: tuple[Upstream, ...] = _DEFAULTS["allowed_upstreams"]
    tenant_db_prefix: str | None = _DEFAULTS["tenant_db_prefix"]
    redis_ca_file: str | None = _DEFAULTS["redis_ca_file"]
    #: Unique per process: tells replicas of one environment apart.
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read and validate every variable; keyword overrides win over the environment."""
        env = os.environ if environ is None else environ
        values = {**_parse(env), **overrides}
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check the combinations that single variables cannot check alone."""
        if self.mode == "worker":
            _require(
                self.process_adapter == "local",
                "APP_PROCESS_ADAPTER",
                "a worker runs its apps itself: set APP_PROCESS_ADAPTER=local",
            )
            _require(
                self.discovery_adapter == "remote",
                "APP_DISCOVERY_ADAPTER",
                "a worker finds its apps through Redis: set APP_DISCOVERY_ADAPTER=remote",
            )
            _require(
                self.command_adapter == "redis",
                "APP_COMMAND_ADAPTER",
                "a worker receives commands through Redis: set APP_COMMAND_ADAPTER=redis",
            )
            _require(
                bool(self.environment_url),
                "ENVIRONMENT_URL",
                "a worker must say where it can be reached",
            )
        if self.process_adapter == "remote":
            _require(
                self.discovery_adapter == "remote",
                "APP_DISCOVERY_ADAPTER",
                "APP_PROCESS_ADAPTER=remote needs APP_DISCOVERY_ADAPTER=remote",
            )
            _require(
                self.command_adapter == "redis",
                "APP_COMMAND_ADAPTER",
                "APP_PROCESS_ADAPTER=remote needs APP_COMMAND_ADAPTER=redis",
            )
        if self.discovery_adapter == "remote":
            _require(
                bool(self.supervisor_redis_url),
                "APP_SUPERVISOR_REDIS_URL",
                "APP_DISCOVERY_ADAPTER=remote needs a Redis URL",
            )
        if self.command_adapter == "redis":
            _require(
                bool(self.command_redis_url or self.supervisor_redis_url),
                "APP_COMMAND_REDIS_URL",
                "APP_COMMAND_ADAPTER=redis needs a Redis URL",
            )

    @property
    def redis_command_url(self) -> str | None:
        """The Redis carrying commands: its own URL, else the config cache's."""
        return self.command_redis_url or self.supervisor_redis_url

    @property
    def proxy_url(self) -> str | None:
        """The URL a supervisor uses to reach this environment."""
        return self.environment_proxy_url or self.environment_url

    @property
    def tenant_db_base(self) -> str:
        """What tenant database names start with: NOCOSUP_TENANT_DB_PREFIX, else DB_DATABASE."""
        return self.tenant_db_prefix or self.db_database

    @property
    def admin_token_file(self) -> Path:
        return self.storage_dir / "admin_token"


def _require(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {why}")
