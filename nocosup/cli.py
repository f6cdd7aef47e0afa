"""The ``nocosup`` command: ``serve`` runs a host under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from nocosup import __version__
from nocosup.errors import ConfigError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from nocosup.config import Settings
    from nocosup.host import create_host

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # `databases` logs every connect at INFO: one line per tenant start is noise.
    logging.getLogger("databases").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
        host = create_host(settings)
    except ConfigError as exc:
        print(f"nocosup: configuration error: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        host,
        host=args.host,
        port=args.port,
        lifespan="on",
        access_log=args.access_log,
        log_level=args.log_level,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.stop_grace + 5,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nocosup", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nocosup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    serve = sub.add_parser("serve", help="run the supervisor or a worker (APP_MODE) under uvicorn")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="proxies whose X-Forwarded-* headers are trusted",
    )
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
