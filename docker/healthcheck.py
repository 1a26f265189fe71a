#!/usr/bin/env python
"""Container health checks, installed as ``incept-healthcheck`` in every incept
image and used by Docker ``HEALTHCHECK``s, compose and Kubernetes probes.

    incept-healthcheck volume        the shared volume answers and is writable
    incept-healthcheck rq-worker     ... and an rq worker of this host is alive
    incept-healthcheck http URL      URL answers 2xx within the timeout

Exit status 0 = healthy, 1 = unhealthy (the reason goes to stderr). Paths and
Redis come from the one Settings class, like the services themselves."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.request


def check_volume() -> str | None:
    from incept.settings import Settings

    root = Settings().data_root
    try:
        # statvfs blocks on a hung network mount; the probe's timeout turns that
        # into a failure instead of a trainer that silently stops writing.
        os.statvfs(root)
    except OSError as e:
        return f"shared volume {root} does not answer: {e}"
    if not os.access(root, os.W_OK | os.X_OK):
        return f"shared volume {root} is not writable by uid {os.getuid()}"
    return None


def check_rq_worker() -> str | None:
    problem = check_volume()
    if problem:
        return problem
    from redis import Redis
    from rq import Worker

    from incept.settings import Settings

    settings = Settings()
    try:
        conn = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        # A worker stays registered only while it renews its heartbeat key, so
        # being listed means its main loop is alive.
        workers = Worker.all(connection=conn)
    except Exception as e:  # any Redis failure is "unhealthy", never a traceback
        return f"redis at {settings.redis_url} does not answer: {type(e).__name__}: {e}"
    host = socket.gethostname()
    if not any(w.hostname == host for w in workers):
        return f"no live rq worker registered for host {host}"
    return None


def check_http(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed local URL)
            if 200 <= response.status < 300:
                return None
            return f"{url} answered {response.status}"
    except Exception as e:
        return f"{url} failed: {type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="incept-healthcheck", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    sub.add_parser("volume")
    sub.add_parser("rq-worker")
    http = sub.add_parser("http")
    http.add_argument("url")
    http.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.check == "volume":
        problem = check_volume()
    elif args.check == "rq-worker":
        problem = check_rq_worker()
    else:
        problem = check_http(args.url, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
