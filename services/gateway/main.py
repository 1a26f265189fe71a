"""``incept gateway``: serve the API and the page with uvicorn on Settings.host:port."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="default: INCEPT_HOST")
    parser.add_argument("--port", type=int, help="default: INCEPT_PORT")
    parser.add_argument("--data-root", help="default: INCEPT_DATA_ROOT")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from incept.settings import Settings
    from services.gateway.app import create_app

    overrides = {k: v for k, v in {"host": args.host, "port": args.port,
                                   "data_root": args.data_root}.items() if v is not None}
    settings = Settings(**overrides)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                proxy_headers=True, timeout_graceful_shutdown=10)
    return 0
