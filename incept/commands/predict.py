"""``incept predict IMAGE...``: classify photos through the gateway (default),
or straight through TF Serving's gRPC or REST API (``incept.serving``)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from incept.commands.client import add_endpoint_arguments, endpoint
from incept.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="JPEG or PNG files")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--grpc", metavar="HOST:PORT", help="TF Serving's gRPC API")
    where.add_argument("--rest", metavar="URL", help="TF Serving's REST API, e.g. http://host:8501")
    # Last in the group, so the usage line shows the three choices together.
    add_endpoint_arguments(parser, url_group=where)
    parser.add_argument("--model", help="model name (default: the gateway's only/first model)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")


def _read(paths: list[Path]) -> list[bytes]:
    out = []
    for p in paths:
        try:
            out.append(p.read_bytes())
        except OSError as e:
            raise UserError(f"cannot read {p}: {e.strerror}") from None
    return out


def _via_gateway(args, images: list[bytes]) -> dict:
    from incept.client import GatewayClient

    url, token = endpoint(args)
    with GatewayClient(url, token) as client:
        model = args.model
        if model is None:
            models = client.models()
            if not models:
                raise UserError(f"the gateway at {url} serves no model yet")
            model = models[0]["name"]
        return client.predict(model, images)


async def _via_tfserving(args, images: list[bytes]) -> dict:
    from incept.errors import ApiError
    from incept.serving.backend import PredictionBackend
    from incept.serving.outputs import answer_json

    if args.grpc:
        from incept.serving.grpc import GrpcBackend
        backend: PredictionBackend = GrpcBackend(args.grpc)
    else:
        from incept.serving.rest import RestBackend
        backend = RestBackend(args.rest)
    await backend.start()
    try:
        result = await backend.predict(args.model, images)
    except ApiError as e:
        raise UserError(e.message) from None
    finally:
        await backend.close()
    return answer_json(result)


def run(args: argparse.Namespace) -> int:
    if (args.grpc or args.rest) and not args.model:
        raise UserError("--model is needed with --grpc/--rest")
    images = _read(args.images)
    answer = asyncio.run(_via_tfserving(args, images)) if (args.grpc or args.rest) \
        else _via_gateway(args, images)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(f"model {answer['model']}, version {answer['version']}")
    for path, p in zip(args.images, answer["predictions"], strict=False):
        if p["unknown"]:
            verdict = "not one of the known classes"
        else:
            verdict = f"{p['top'][0]['label']} ({p['top'][0]['score']:.1%})"
        others = ", ".join(f"{t['label']} {t['score']:.1%}" for t in p["top"])
        print(f"{path}: {verdict}   [{others}]")
    return 0
