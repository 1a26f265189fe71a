"""``incept submit SPEC``, ``incept status [JOB]``, ``incept watch JOB``: the
command-line client of the gateway (``incept.client``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from incept.client import GatewayClient, resolve_endpoint
from incept.console import job_panel, jobs_table, watch


def add_endpoint_arguments(parser: argparse.ArgumentParser,
                           url_group: argparse._ActionsContainer | None = None) -> None:
    """--url (into ``url_group`` when it excludes other targets), --token and
    --data-root: where the gateway is, read by ``endpoint``."""
    (url_group or parser).add_argument(
        "--url", default=None, help="gateway URL (default: INCEPT_GATEWAY_URL, else the local "
                                    "stack's, else http://127.0.0.1:8000)")
    parser.add_argument("--token", default=None,
                        help="API token (default: INCEPT_API_TOKEN, else the local stack's)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="find the local stack's URL and token under this data root")


def endpoint(args: argparse.Namespace) -> tuple[str, str | None]:
    return resolve_endpoint(args.url, args.token, args.data_root)


def _client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(*endpoint(args))


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="job spec (YAML or JSON)")
    parser.add_argument("--watch", action="store_true", help="then follow its progress")
    add_endpoint_arguments(parser)


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", help="a job id (default: list the jobs)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    add_endpoint_arguments(parser)


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job id")
    add_endpoint_arguments(parser)


def run_submit(args: argparse.Namespace) -> int:
    from incept.spec import load_spec

    spec = load_spec(args.spec)  # every problem listed before anything is sent
    with _client(args) as client:
        body = client.submit(spec.model_dump(mode="json", exclude_unset=True))
        job_id = body["job_id"]
        print(f"submitted {job_id}" + (f"  {client.url}{body['url']}" if str(body.get("url", "")
                                                                             ).startswith("/")
                                       else f"  {body['url']}" if body.get("url") else ""))
        if args.watch:
            return watch(client, job_id)
    return 0


def run_status(args: argparse.Namespace) -> int:
    import json
    from typing import Any

    from rich.console import Console

    console = Console()
    with _client(args) as client:
        data: Any = client.job(args.job) if args.job else client.jobs()
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.job:
        console.print(job_panel(data))
    else:
        console.print(jobs_table(data))
    return 0


def run_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return watch(client, args.job)
