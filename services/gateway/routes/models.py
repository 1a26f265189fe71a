"""``/v1/models``: the served models listed, and under ``/v1/models/{name}``
TF Serving's REST API exactly (status, metadata, ``:predict`` in row and
columnar form, ``/versions/{v}`` and ``/labels/{l}``, ``{"error": ...}``), so a
client written for TF Serving works unchanged against the gateway."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from incept.serving import tfserving_json as tfs
from services.gateway import service, serving
from services.gateway.deps import BackendDep, LayoutDep, ModelName, PredictAuthorized
from services.gateway.errors import ApiError
from services.gateway.images import check_instance_count
from services.gateway.schemas import (
    ModelList,
    ModelStatusOut,
    TFServingError,
    TFServingMetadata,
    TFServingPredictResponse,
)

router = APIRouter(prefix="/v1/models", tags=["models (TF Serving REST API)"],
                   dependencies=PredictAuthorized,
                   responses={401: {"model": TFServingError}, 503: {"model": TFServingError}})

_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": TFServingError}, 404: {"model": TFServingError}}
_PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {**_ERRORS, 413: {"model": TFServingError}}
_PREDICT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/TFServingPredictRequest"}}}}}


def _json(body: dict) -> Response:
    return Response(tfs.dumps(body), media_type="application/json")


@router.get("", response_model=ModelList, tags=["models"])
async def list_models(layout: LayoutDep, backend: BackendDep):
    """The gateway's own list (TF Serving has none): every model on disk and its versions."""
    return {"models": await service.list_models(layout, backend)}


async def _status(backend, name: str, version: str | None, label: str | None) -> Response:
    pinned = await serving.resolve(backend, name, version, label)
    status = serving.only_version(await backend.model_status(name), pinned)
    return _json({"model_version_status": [tfs.version_status(v.version, v.state, v.error)
                                           for v in status.versions]})


@router.get("/{name}", response_model=ModelStatusOut, responses=_ERRORS)
async def model_status(name: ModelName, backend: BackendDep):
    return await _status(backend, name, None, None)


@router.get("/{name}/versions/{version}", response_model=ModelStatusOut, responses=_ERRORS)
async def version_status(name: ModelName, version: str, backend: BackendDep):
    return await _status(backend, name, version, None)


@router.get("/{name}/labels/{label}", response_model=ModelStatusOut, responses=_ERRORS)
async def label_status(name: ModelName, label: str, backend: BackendDep):
    return await _status(backend, name, None, label)


async def _metadata(backend, name: str, version: str | None, label: str | None) -> Response:
    meta = await backend.metadata(name, await serving.resolve(backend, name, version, label))
    return _json(tfs.metadata_json(name, meta.version, meta.signature_def))


@router.get("/{name}/metadata", response_model=TFServingMetadata, responses=_ERRORS)
async def metadata(name: ModelName, backend: BackendDep):
    return await _metadata(backend, name, None, None)


@router.get("/{name}/versions/{version}/metadata", response_model=TFServingMetadata,
            responses=_ERRORS)
async def version_metadata(name: ModelName, version: str, backend: BackendDep):
    return await _metadata(backend, name, version, None)


@router.get("/{name}/labels/{label}/metadata", response_model=TFServingMetadata,
            responses=_ERRORS)
async def label_metadata(name: ModelName, label: str, backend: BackendDep):
    return await _metadata(backend, name, None, label)


async def _predict(request: Request, name: str, version: str | None, label: str | None) -> Response:
    # The hot path takes its collaborators from app.state: FastAPI would solve
    # each dependency on every request.
    settings = request.app.state.settings
    body = await serving.read_body(request, settings.max_body_bytes)
    check_instance_count(body, settings.max_images_per_request)
    try:
        parsed = tfs.parse_predict(body)
    except tfs.RequestError as e:
        raise ApiError(str(e)) from None
    if parsed.signature_name != tfs.SIGNATURE:
        raise ApiError(f'Serving signature name: "{parsed.signature_name[:80]}" not found in '
                       "signature def")
    images = await serving.checked(parsed.images, request.app.state, media_is_400=True)
    pinned = await serving.resolve(request.app.state.backend, name, version, label)
    result = await serving.predict(request.app.state, name, images, pinned)
    return _json(tfs.predict_response(result.outputs, parsed.columnar))


@router.post("/{name}:predict", response_model=TFServingPredictResponse,
             responses=_PREDICT_ERRORS, openapi_extra=_PREDICT_BODY)
async def predict(name: ModelName, request: Request):
    return await _predict(request, name, None, None)


@router.post("/{name}/versions/{version}:predict", response_model=TFServingPredictResponse,
             responses=_PREDICT_ERRORS, openapi_extra=_PREDICT_BODY)
async def version_predict(name: ModelName, version: str, request: Request):
    return await _predict(request, name, version, None)


@router.post("/{name}/labels/{label}:predict", response_model=TFServingPredictResponse,
             responses=_PREDICT_ERRORS, openapi_extra=_PREDICT_BODY)
async def label_predict(name: ModelName, label: str, request: Request):
    return await _predict(request, name, None, label)
