"""The App Supervisor web page: a built-in plugin of the supervisor role.

It adds the page at ``/`` (static files under ``/ui``), cookie login for it
(``/api/login``, ``/api/logout``) and the live event stream ``/api/events`` the page
listens to. The page itself is hand-written HTML, CSS and JavaScript shipped in
``static/``: no build step, nothing fetched from elsewhere at run time.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from nocosup.hookspecs import hookimpl
from nocosup.host import Host
from nocosup_webui import routes
from nocosup_webui.stream import STREAMS, EventStreams


@hookimpl
def register_routes(host: Host) -> list[BaseRoute] | None:
    # the page drives the admin API, which only a supervisor serves
    return routes.routes() if host.role.name == "supervisor" else None


@hookimpl
def startup(host: Host) -> None:
    # A fresh set per start: a host can be stopped and started again.
    if host.role.name == "supervisor":
        STREAMS[host] = EventStreams.open()


@hookimpl(tryfirst=True)
def shutdown(host: Host) -> None:
    """End the live streams first, so no page holds the host open while it stops."""
    streams = STREAMS.pop(host, None)
    if streams is not None:
        streams.close()
