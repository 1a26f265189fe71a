"""``/v2``: the Open Inference Protocol (KServe v2) over REST — health, server
and model metadata, model readiness, inference with JSON or the binary tensor
data extension, and the model repository index — with the same limits and
authentication as ``:predict``; errors are ``{"error": ...}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from incept.serving import oip
from services.gateway import inference, serving
from services.gateway.deps import ModelName, PredictAuthorized
from services.gateway.schemas import (
    OipError,
    OipInferResponse,
    OipLive,
    OipModelMetadata,
    OipReady,
    OipRepositoryModel,
    OipServerMetadata,
)

# Health is public, as /healthz and /readyz are (probes carry no token); the rest
# needs the token when prediction is protected.
public = APIRouter(prefix="/v2", responses={503: {"model": OipError}})
protected = APIRouter(prefix="/v2", dependencies=PredictAuthorized,
                      responses={401: {"model": OipError}, 503: {"model": OipError}})


_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": OipError}, 404: {"model": OipError}}
_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/OipInferRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": "JSON header, then binary tensor data "
                                                           f"({oip.HEADER_LENGTH})"}}}}}
_NOT_READY: dict[int | str, dict[str, Any]] = {400: {"model": OipReady, "description": "not ready"}}
_MODEL_NOT_READY: dict[int | str, dict[str, Any]] = {**_NOT_READY, 404: {"model": OipError}}


def _boolean(ok: bool, key: str) -> JSONResponse:
    # The status is the answer: 200 true, 400 false (as Triton answers).
    return JSONResponse({key: ok}, status_code=200 if ok else 400)


@protected.get("", response_model=OipServerMetadata)
async def server_metadata():
    return inference.server_metadata()


@public.get("/health/live", response_model=OipLive)
async def live():
    return {"live": True}


@public.get("/health/ready", response_model=OipReady, responses=_NOT_READY)
async def ready(request: Request):
    return _boolean(await inference.server_ready(request.app.state), "ready")


@protected.post("/repository/index", response_model=list[OipRepositoryModel])
async def repository_index(request: Request):
    return await inference.repository_index(request.app.state)


@protected.get("/models/{name}", response_model=OipModelMetadata, responses=_ERRORS)
async def model_metadata(name: ModelName, request: Request):
    return await inference.model_metadata(request.app.state, name, None)


@protected.get("/models/{name}/versions/{version}", response_model=OipModelMetadata,
            responses=_ERRORS)
async def version_metadata(name: ModelName, version: str, request: Request):
    return await inference.model_metadata(request.app.state, name, version)


@protected.get("/models/{name}/ready", response_model=OipReady, responses=_MODEL_NOT_READY)
async def model_ready(name: ModelName, request: Request):
    return _boolean(await inference.model_ready(request.app.state, name, None), "ready")


@protected.get("/models/{name}/versions/{version}/ready", response_model=OipReady,
            responses=_MODEL_NOT_READY)
async def version_ready(name: ModelName, version: str, request: Request):
    return _boolean(await inference.model_ready(request.app.state, name, version), "ready")


async def _infer(request: Request, name: str, version: str | None) -> Response:
    state = request.app.state
    body = await serving.read_body(request, state.settings.max_body_bytes)
    header, binary = await inference.infer(state, name, version, body,
                                           request.headers.get(oip.HEADER_LENGTH))
    json_header = oip.json_bytes(header)
    if not binary:
        return Response(json_header, media_type="application/json")
    return Response(json_header + binary, media_type="application/octet-stream",
                    headers={oip.HEADER_LENGTH: str(len(json_header))})


@protected.post("/models/{name}/infer", response_model=OipInferResponse,
             responses={**_ERRORS, 413: {"model": OipError}}, openapi_extra=_INFER_BODY)
async def infer(name: ModelName, request: Request):
    return await _infer(request, name, None)


@protected.post("/models/{name}/versions/{version}/infer", response_model=OipInferResponse,
             responses={**_ERRORS, 413: {"model": OipError}}, openapi_extra=_INFER_BODY)
async def version_infer(name: ModelName, version: str, request: Request):
    return await _infer(request, name, version)


router = APIRouter(tags=["Open Inference Protocol (v2)"])
router.include_router(public)
router.include_router(protected)
