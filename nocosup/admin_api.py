"""The admin API under ``/api``: JSON in, JSON out, a Bearer token on every route."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route

from nocosup import openapi, templates
from nocosup import validation as v
from nocosup.auth import Endpoint, admin_only
from nocosup.errors import ShuttingDown
from nocosup.idempotency import idempotent
from nocosup.listing import AppQuery
from nocosup.plugins import APP_FACTORY
from nocosup.supervisor import Supervisor


def _supervisor(request: Request) -> Supervisor:
    supervisor = getattr(request.app.role, "supervisor", None)
    if not isinstance(supervisor, Supervisor):
        raise ShuttingDown("the supervisor is not running; retry shortly")
    return supervisor


async def _body(request: Request) -> dict[str, Any]:
    raw = getattr(request.state, "raw_body", None)  # read already by @idempotent
    return v.parse_json_object(raw if raw is not None else await v.read_body(request))


@admin_only
async def list_apps(request: Request) -> Response:
    query = AppQuery.from_params(request.query_params)
    return JSONResponse(await _supervisor(request).list_apps(query))


@admin_only
@idempotent
async def create_app(request: Request) -> Response:
    app = await _supervisor(request).create_app(await _body(request))
    return JSONResponse(app, status_code=201, headers={"Location": f"/api/apps/{app['name']}"})


@admin_only
async def get_app(request: Request) -> Response:
    return JSONResponse(await _supervisor(request).get_app(request.path_params["name"]))


@admin_only
async def patch_app(request: Request) -> Response:
    name = request.path_params["name"]
    return JSONResponse(await _supervisor(request).update_app(name, await _body(request)))


@admin_only
async def delete_app(request: Request) -> Response:
    drop = v.flag(request.query_params.get("drop_database"), "drop_database", False)
    force = v.flag(request.query_params.get("force"), "force", False)
    result = await _supervisor(request).delete_app(request.path_params["name"], drop, force)
    return JSONResponse(result)


@admin_only
@idempotent
async def start_app(request: Request) -> Response:
    wait = v.flag(request.query_params.get("wait"), "wait", True)
    app, done = await _supervisor(request).start_app(request.path_params["name"], wait)
    return JSONResponse(app, status_code=200 if done else 202)


@admin_only
@idempotent
async def stop_app(request: Request) -> Response:
    wait = v.flag(request.query_params.get("wait"), "wait", True)
    app, done = await _supervisor(request).stop_app(request.path_params["name"], wait)
    return JSONResponse(app, status_code=200 if done else 202)


@admin_only
@idempotent
async def move_app(request: Request) -> Response:
    name = request.path_params["name"]
    return JSONResponse(await _supervisor(request).move_app(name, await _body(request)))


@admin_only
async def list_commands(request: Request) -> Response:
    return JSONResponse(await _supervisor(request).list_commands(request.path_params["name"]))


@admin_only
@idempotent
async def run_command(request: Request) -> Response:
    name = request.path_params["name"]
    return JSONResponse(await _supervisor(request).run_command(name, await _body(request)))


@admin_only
async def list_environments(request: Request) -> Response:
    envs = await _supervisor(request).environments.list()
    return JSONResponse({"environments": envs})


@admin_only
async def get_environment(request: Request) -> Response:
    env = await _supervisor(request).environments.get(request.path_params["name"])
    return JSONResponse(env)


@admin_only
async def delete_environment(request: Request) -> Response:
    force = v.flag(request.query_params.get("force"), "force", False)
    result = await _supervisor(request).delete_environment(request.path_params["name"], force)
    return JSONResponse(result)


@admin_only
async def list_plugins(request: Request) -> Response:
    return JSONResponse({"plugins": request.app.hooks.describe()})


@admin_only
async def list_templates(request: Request) -> Response:
    plugin = request.app.hooks.default_factory()
    # what builds an app created without "template"
    default = {APP_FACTORY: request.app.settings.app_factory, "nocosup_starter": "starter"}.get(
        plugin, f"plugin {plugin}" if plugin else None
    )
    return JSONResponse({"templates": templates.describe(), "default": default})


@admin_only
async def openapi_document(request: Request) -> Response:
    host = request.app

    def served(path: str) -> bool:
        probe = {"type": "http", "method": "GET", "path": path.replace("{name}", "x")}
        probe["root_path"] = ""
        return any(r.matches(probe)[0] is not Match.NONE for r in host.router.routes)

    return JSONResponse(openapi.document(served))


def _by_method(**endpoints: Endpoint) -> Endpoint:
    """One endpoint per path, so a 405 lists every method the path takes in Allow."""

    async def endpoint(request: Request) -> Response:
        method = request.method.lower()
        return await endpoints["get" if method == "head" else method](request)

    return endpoint


def routes() -> list[BaseRoute]:
    return [
        Route("/api/apps", _by_method(get=list_apps, post=create_app), methods=["GET", "POST"]),
        Route(
            "/api/apps/{name}",
            _by_method(get=get_app, patch=patch_app, delete=delete_app),
            methods=["GET", "PATCH", "DELETE"],
        ),
        Route("/api/apps/{name}/start", start_app, methods=["POST"]),
        Route("/api/apps/{name}/stop", stop_app, methods=["POST"]),
        Route("/api/apps/{name}/move", move_app, methods=["POST"]),
        Route(
            "/api/apps/{name}/commands",
            _by_method(get=list_commands, post=run_command),
            methods=["GET", "POST"],
        ),
        Route("/api/environments", list_environments, methods=["GET"]),
        Route(
            "/api/environments/{name}",
            _by_method(get=get_environment, delete=delete_environment),
            methods=["GET", "DELETE"],
        ),
        Route("/api/plugins", list_plugins, methods=["GET"]),
        Route("/api/templates", list_templates, methods=["GET"]),
        Route("/api/openapi.json", openapi_document, methods=["GET"]),
    ]
