"""The admin API's OpenAPI 3.1 document, served at ``GET /api/openapi.json``.

Written by hand next to the routes it describes (nocosup/admin_api.py and the web page's
login routes) rather than generated: the shapes are few and stable, and CI holds the
document to the code twice, with openapi-spec-validator and with schemathesis calling
every operation of a live supervisor (tests/test_openapi.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nocosup import __version__, listing
from nocosup.status import AppStatus

JSON = "application/json"
APP_NAME_PATTERN = "^[a-z][a-z0-9_-]{0,39}$"
TEMPLATE_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    """Error answers: every one has the body ``{"error": {"code", "message", ...}}``."""
    what = {
        400: "Bad request",
        401: "Missing or wrong admin token (UNAUTHORIZED)",
        403: "A cookie-authenticated write that is not from the page (CSRF_REJECTED)",
        404: "No such app, environment or route",
        405: "Method not allowed (the Allow header lists the path's methods)",
        409: (
            "The name is taken (APP_EXISTS), a domain is another's (DOMAIN_TAKEN), the "
            "database name is nocosup's own (DATABASE_NAME_RESERVED), a later stop/start took "
            "over (APP_STATE_CONFLICT), an environment is in use (ENVIRONMENT_IN_USE), an "
            "app cannot move (APP_NOT_MOVABLE), or another admin call holds it (APP_BUSY)"
        ),
        413: "The body is over its limit (PAYLOAD_TOO_LARGE)",
        422: "Invalid input (VALIDATION_ERROR naming the field, or INVALID_JSON)",
        429: "Too many failed logins from this address (TOO_MANY_LOGINS, Retry-After)",
        500: "A database could not be made or dropped (DATABASE_ERROR)",
        502: "An environment failed the command (COMMAND_FAILED)",
        503: "An environment, Redis or the supervisor cannot serve now (Retry-After)",
        504: "An environment did not answer in time (COMMAND_TIMEOUT)",
    }
    return {str(s): _json(_ref("Error"), what[s]) for s in statuses}


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The app's name.",
    "schema": {"type": "string", "pattern": APP_NAME_PATTERN},
}


def _flag(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description + " (1/true/yes/on or 0/false/no/off).",
        "schema": {"type": "string"},
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_LISTING = [
    _query(
        "limit",
        f"Apps per page, from 1 to {listing.MAX_LIMIT} (default {listing.DEFAULT_LIMIT}).",
        {"type": "string", "pattern": "^[0-9]{1,4}$"},
    ),
    _query(
        "cursor",
        "The next_cursor of the previous page, unchanged.",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,56}$"},
    ),
    _query(
        "status",
        "Only apps with this status on at least one of their environments.",
        {"enum": [s.value for s in AppStatus]},
    ),
    _query(
        "environment",
        "Only apps placed on this environment.",
        {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"},
    ),
    _query(
        "prefix",
        "Only apps whose name starts with this.",
        {"type": "string", "pattern": "^[a-z0-9_-]{0,40}$"},
    ),
]
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Any unique string (1-255 printable ASCII characters): a retry with the "
    "same key and request gets the first answer (Idempotent-Replayed: true) instead of "
    "running again; answers are kept 24 hours.",
    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
}
#: A custom domain as the API takes it (checked further by nocosup.validation.domains:
#: labels, length, no IP address); answers hold it lowercased.
_DOMAINS = {
    "type": "array",
    "maxItems": 20,
    "uniqueItems": True,
    "items": {"type": "string", "pattern": "^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"},
    "description": "Host names served by this app at its root (no port), e.g. crm.example.com.",
}
_ENV_NAME = {
    **_NAME,
    "description": "The environment's name.",
    "schema": {"type": "string"},
}
_WAIT = _flag("wait", "false answers 202 at once and carries on in the background")
_ADMIN: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"sessionCookie": []}]

_SCHEMAS: dict[str, Any] = {
    "AppCommand": {
        "type": "object",
        "required": ["name", "description"],
        "properties": {"name": {"type": "string"}, "description": {"type": "string"}},
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                },
            }
        },
    },
    "Options": {
        "type": "object",
        "description": "startMode, dbConnType, dbProvisioner, and any keys of the app's own.",
        "properties": {
            "startMode": {"enum": ["on_first_request", "with_supervisor"]},
            "dbConnType": {"type": "string"},
            "dbProvisioner": {"type": "string"},
            "maxBodySize": {"type": "integer", "minimum": 1},
            "idleTimeout": {
                "type": "number",
                "minimum": 0,
                "description": "seconds without traffic before the app goes idle (0: never)",
            },
            "maxConcurrency": {"type": "integer", "minimum": 1},
            "maxQueue": {"type": "integer", "minimum": 0},
            "failover": {
                "type": "boolean",
                "description": "move the app to an online environment once every one of its "
                "environments has been offline for NOCOSUP_FAILOVER_AFTER seconds",
            },
        },
    },
    "Database": {
        "type": "object",
        "required": ["connType", "name", "schema"],
        "properties": {
            "connType": {"type": "string"},
            "name": {"type": "string"},
            "schema": {"type": ["string", "null"]},
            "provisioner": {"type": "string"},
        },
    },
    "EnvResult": {
        "type": "object",
        "required": ["ok", "status", "error"],
        "properties": {
            "ok": {"type": "boolean"},
            "status": {"type": "string"},
            "error": {"type": ["string", "null"]},
        },
    },
    "App": {
        "type": "object",
        "required": [
            "name",
            "title",
            "environments",
            "options",
            "database",
            "desired_state",
            "version",
            "created_at",
            "updated_at",
            "domains",
            "statuses",
            "errors",
            "last_seen_at",
        ],
        "properties": {
            "name": {"type": "string", "pattern": APP_NAME_PATTERN},
            "title": {"type": "string"},
            "environments": {"type": "array", "items": {"type": "string"}},
            "options": _ref("Options"),
            "database": _ref("Database"),
            "desired_state": {"enum": ["running", "stopped"]},
            "version": {"type": "integer", "minimum": 1},
            "created_at": {"type": "string"},
            "updated_at": {"type": "string"},
            "domains": _DOMAINS,
            "statuses": {
                "type": "object",
                "additionalProperties": {"enum": [s.value for s in AppStatus]},
            },
            "errors": {"type": "object", "additionalProperties": {"type": "string"}},
            "last_seen_at": {
                "type": "object",
                "description": "per environment: when the app last served a request there",
                "additionalProperties": {"type": ["string", "null"]},
            },
            "results": {"type": "object", "additionalProperties": _ref("EnvResult")},
            "moved": {
                "type": "object",
                "description": "after a move: the environments it left and the one it is on",
                "properties": {
                    "from": {"type": "array", "items": {"type": "string"}},
                    "to": {"type": "string"},
                },
            },
            "template": {
                "type": ["string", "null"],
                "description": "The template that builds the app; null: the default factory.",
            },
        },
    },
    "NewApp": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": APP_NAME_PATTERN},
            "title": {"type": "string", "minLength": 1, "maxLength": 200},
            "environments": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ]
            },
            "options": _ref("Options"),
            "domains": _DOMAINS,
            "template": {
                "type": ["string", "null"],
                "pattern": TEMPLATE_NAME_PATTERN,
                "description": "An installed template (GET /api/templates); default: the "
                "default factory (NOCOSUP_APP_FACTORY, else the starter).",
            },
        },
    },
    "AppPatch": {
        "type": "object",
        "additionalProperties": False,
        "description": "A JSON merge patch (RFC 7386) of the title and options; domains, "
        "when given, replace the app's (null or [] removes them all).",
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 200},
            "options": {"type": "object"},
            "domains": {"oneOf": [_DOMAINS, {"type": "null"}]},
        },
    },
    "EnvironmentRemoved": {
        "type": "object",
        "required": ["name", "removed", "apps"],
        "properties": {
            "name": {"type": "string"},
            "removed": {"type": "boolean"},
            "apps": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Apps that still list the environment (a forced removal).",
            },
        },
    },
    "Removed": {
        "type": "object",
        "required": ["name", "removed", "database_dropped", "results"],
        "properties": {
            "name": {"type": "string"},
            "removed": {"type": "boolean"},
            "database_dropped": {"type": "boolean"},
            "results": {"type": "object", "additionalProperties": _ref("EnvResult")},
        },
    },
    "Environment": {
        "type": "object",
        "required": ["name", "status", "instances"],
        "properties": {
            "name": {"type": "string"},
            "url": {"type": ["string", "null"]},
            "proxy_url": {"type": ["string", "null"]},
            "version": {"type": ["string", "null"]},
            "status": {"enum": ["online", "offline"]},
            "instances": {"type": "array", "items": {"type": "string"}},
            "last_heartbeat_at": {"type": ["string", "null"]},
            "registered_at": {"type": ["string", "null"]},
            "databases": {
                "type": ["object", "null"],
                "description": "Where its workers keep app data: the provisioner apps use by "
                "default (dialect) and the location of each one other environments can reach "
                "(shared); an app moves only between environments with the same location.",
                "properties": {
                    "dialect": {"type": "string"},
                    "shared": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
    },
    "EnvironmentDetail": {
        "allOf": [
            _ref("Environment"),
            {
                "type": "object",
                "required": ["dead_letters"],
                "properties": {
                    "dead_letters": {
                        "oneOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "required": ["count", "recent"],
                                "properties": {
                                    "count": {"type": "integer", "minimum": 0},
                                    "recent": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                        ]
                    }
                },
            },
        ]
    },
    "Plugin": {
        "type": "object",
        "required": ["name", "source", "builtin", "version", "hooks"],
        "properties": {
            "name": {"type": "string"},
            "source": {"type": "string"},
            "builtin": {"type": "boolean"},
            "version": {"type": ["string", "null"]},
            "hooks": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Template": {
        "type": "object",
        "required": ["name", "distribution", "version", "description"],
        "properties": {
            "name": {"type": "string"},
            "distribution": {"type": ["string", "null"]},
            "version": {"type": ["string", "null"]},
            "description": {"type": "string"},
        },
    },
}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    admin: bool = True,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    op["security"] = _ADMIN if admin else []
    return op


def _app_answer(description: str) -> dict[str, Any]:
    return _json(_ref("App"), description)


def document(served: Callable[[str], bool] = lambda path: True) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API (a fresh dict each call), with the paths
    for which ``served(path)`` holds: the web page's routes go with its plugin."""
    page = {
        "type": "object",
        "required": ["apps", "total", "next_cursor"],
        "properties": {
            "apps": _array("App"),
            "total": {"type": "integer", "minimum": 0, "description": "Apps matching"},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as cursor for the next page; null on the last page.",
            },
        },
    }
    envs = {
        "type": "object",
        "required": ["environments"],
        "properties": {"environments": _array("Environment")},
    }
    plugins = {
        "type": "object",
        "required": ["plugins"],
        "properties": {"plugins": _array("Plugin")},
    }
    template_list = {
        "type": "object",
        "required": ["templates", "default"],
        "properties": {"templates": _array("Template"), "default": {"type": ["string", "null"]}},
    }
    writes = (401, 403, 413, 422)
    commands = (502, 503, 504)
    paths: dict[str, Any] = {
        "/healthz": {
            "get": _op(
                "Liveness",
                {"200": _json({"type": "object", "required": ["status"]}, "Serving")},
                admin=False,
            )
        },
        "/metrics": {
            "get": _op(
                "Counters and gauges of this process in the Prometheus text format "
                "(Bearer: NOCOSUP_METRICS_TOKEN or the admin token)",
                {
                    "200": {
                        "description": "The metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401),
                },
            )
        },
        "/readyz": {
            "get": _op(
                "Readiness: the host started and every probe passed",
                {
                    "200": _json(_readiness(), "Ready"),
                    "503": _json(_readiness(), "Not ready: the failing checks say why"),
                },
                admin=False,
            )
        },
        "/api/apps": {
            "get": _op(
                "A page of apps, in name order, with their statuses",
                {"200": _json(page, "The apps"), **_errors(401, 422, 503)},
                parameters=_LISTING,
            ),
            "post": _op(
                "Create an app (and start it if its startMode is with_supervisor)",
                {"201": _app_answer("Created"), **_errors(*writes, 409, 500, *commands)},
                body=_ref("NewApp"),
                parameters=[_IDEMPOTENCY],
            ),
        },
        "/api/apps/{name}": {
            "get": _op(
                "One app",
                {"200": _app_answer("The app"), **_errors(401, 404, 422, 503)},
                parameters=[_NAME],
            ),
            "patch": _op(
                "Change the title, options (a merge patch) or domains",
                {
                    "200": _app_answer("The app as changed"),
                    **_errors(*writes, 404, 409, *commands),
                },
                parameters=[_NAME],
                body=_ref("AppPatch"),
            ),
            "delete": _op(
                "Stop the app everywhere and forget it",
                {
                    "200": _json(_ref("Removed"), "Removed"),
                    **_errors(401, 403, 404, 422, 500, *commands),
                },
                parameters=[
                    _NAME,
                    _flag("drop_database", "true drops the app's database"),
                    _flag("force", "true forgets the app even if an environment could not"),
                ],
            ),
        },
        "/api/apps/{name}/start": {
            "post": _op(
                "Start the app in each of its environments",
                {
                    "200": _app_answer("Running everywhere"),
                    "202": _app_answer("Starting (wait=false)"),
                    **_errors(401, 403, 404, 409, 422, *commands),
                },
                parameters=[_NAME, _WAIT, _IDEMPOTENCY],
            )
        },
        "/api/apps/{name}/stop": {
            "post": _op(
                "Stop the app in each of its environments",
                {
                    "200": _app_answer("Stopped everywhere"),
                    "202": _app_answer("Stopping (wait=false)"),
                    **_errors(401, 403, 404, 409, 422, *commands),
                },
                parameters=[_NAME, _WAIT, _IDEMPOTENCY],
            )
        },
        "/api/apps/{name}/move": {
            "post": _op(
                "Move the app to another environment (its database must be reachable there)",
                {
                    "200": _app_answer("Moved: on the target only"),
                    **_errors(*writes, 404, 409, *commands),
                },
                parameters=[_NAME, _IDEMPOTENCY],
                body={
                    "type": "object",
                    "required": ["to"],
                    "additionalProperties": False,
                    "properties": {
                        "to": {
                            "type": "string",
                            "description": "The environment the app ends on.",
                        }
                    },
                },
            )
        },
        "/api/apps/{name}/commands": {
            "get": _op(
                "The maintenance commands the app offers",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["commands"],
                            "properties": {"commands": _array("AppCommand")},
                        },
                        "The commands",
                    ),
                    **_errors(401, 404, 422, 503),
                },
                parameters=[_NAME],
            ),
            "post": _op(
                "Run a maintenance command in each of the app's environments, in order",
                {
                    "200": _app_answer("Ran everywhere"),
                    **_errors(*writes, 404, 409, *commands),
                },
                parameters=[_NAME, _IDEMPOTENCY],
                body={
                    "type": "object",
                    "required": ["command"],
                    "additionalProperties": False,
                    "properties": {
                        "command": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,39}$"},
                        "args": {"type": "object"},
                    },
                },
            ),
        },
        "/api/environments": {
            "get": _op(
                "Every environment, online or not",
                {"200": _json(envs, "The environments"), **_errors(401, 503)},
            )
        },
        "/api/environments/{name}": {
            "get": _op(
                "One environment, with the commands its workers dead-lettered",
                {
                    "200": _json(_ref("EnvironmentDetail"), "The environment"),
                    **_errors(401, 404, 503),
                },
                parameters=[_ENV_NAME],
            ),
            "delete": _op(
                "Forget an environment that is gone (refused while online or hosting apps)",
                {
                    "200": _json(_ref("EnvironmentRemoved"), "Removed"),
                    **_errors(401, 403, 404, 409, 422, 503),
                },
                parameters=[
                    _ENV_NAME,
                    _flag("force", "true removes it even while online or hosting apps"),
                ],
            ),
        },
        "/api/plugins": {
            "get": _op("The loaded plugins", {"200": _json(plugins, "The plugins"), **_errors(401)})
        },
        "/api/templates": {
            "get": _op(
                "The installed app templates and what builds an app without one",
                {"200": _json(template_list, "The templates"), **_errors(401)},
            )
        },
        "/api/login": {
            "post": _op(
                "Sign the web page in: a session cookie for the admin token",
                {"204": {"description": "Signed in (Set-Cookie)"}, **_errors(401, 413, 422, 429)},
                body={
                    "type": "object",
                    "required": ["token"],
                    "additionalProperties": False,
                    "properties": {"token": {"type": "string"}},
                },
                admin=False,
            )
        },
        "/api/logout": {
            "post": _op(
                "End the page's session",
                {"204": {"description": "Signed out"}, **_errors(403)},
                admin=False,
            )
        },
        "/api/events": {
            "get": _op(
                "Live changes as server-sent events",
                {
                    "200": {
                        "description": "An endless text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 503),
                },
            )
        },
        "/api/openapi.json": {
            "get": _op(
                "This document",
                {"200": _json({"type": "object"}, "The OpenAPI document"), **_errors(401)},
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nocosup admin API",
            "version": __version__,
            "description": "Create, start, stop and remove the apps of a nocosup supervisor.",
        },
        "paths": {path: ops for path, ops in paths.items() if served(path)},
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "nocosup_admin"},
            },
        },
    }


def _array(item: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(item)}


def _readiness() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ready", "degraded", "unavailable"]},
            "checks": {"type": "object"},
            "degraded": {"type": "array", "items": {"type": "string"}},
        },
    }
