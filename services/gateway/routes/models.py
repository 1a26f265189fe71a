"""Models served for prediction: list, inspect versions, predict."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from incept.layout import NAME_RE
from services.gateway.backends.inprocess import servable_versions
from services.gateway.deps import BackendDep, LayoutDep, ModelName, PredictAuthorized
from services.gateway.errors import ApiError, TooLarge
from services.gateway.images import read_images
from services.gateway.schemas import ErrorBody, ModelList, ModelOut, PredictResponse

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=PredictAuthorized,
                   responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}})

_MEDIA = ("application/json", "multipart/form-data")


def model_names(layout) -> list[str]:
    if not layout.models.is_dir():
        return []
    return sorted(p.name for p in layout.models.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name))


async def _model_out(name: str, layout, backend) -> dict:
    status = await backend.model_status(name)
    return {"name": name, "versions_on_disk": servable_versions(layout.models / name),
            "versions": [v.__dict__ for v in status.versions], "backend": backend.name}


@router.get("", response_model=ModelList)
async def list_models(layout: LayoutDep, backend: BackendDep):
    out = []
    for name in model_names(layout):
        try:
            out.append(await _model_out(name, layout, backend))
        except ApiError:  # not loaded there, or TF Serving down: still list what is on disk
            out.append({"name": name, "versions_on_disk": servable_versions(layout.models / name),
                        "versions": [], "backend": backend.name})
    return {"models": out}


@router.get("/{name}", response_model=ModelOut, responses={404: {"model": ErrorBody}})
async def get_model(name: ModelName, layout: LayoutDep, backend: BackendDep):
    return await _model_out(name, layout, backend)


async def _read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the request body is larger than {limit} bytes")
    return bytes(body)


@router.post(
    "/{name}:predict", response_model=PredictResponse,
    responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 413: {"model": ErrorBody},
               415: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    }}},
)
async def predict(name: ModelName, request: Request):
    # The hot path takes its collaborators from app.state, where the dependencies
    # would find them: FastAPI solves each dependency on every request (~6 us each).
    state = request.app.state
    settings, backend, metrics = state.settings, state.backend, state.metrics
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() not in _MEDIA:
        raise ApiError("send application/json ({\"instances\": [{\"b64\": ...}]}) "
                       "or multipart/form-data with image files", status_code=415)
    body = await _read_body(request, settings.max_body_bytes)
    if len(body) < 256 * 1024:
        images = read_images(body, content_type, settings)
    else:  # decoding big photos to check them must not stall the event loop
        images = await run_in_threadpool(read_images, body, content_type, settings)
    result = await backend.predict(name, images)
    metrics.predicted_images.labels(model=name).inc(len(images))
    # Built as PredictResponse documents it and encoded directly: validating our
    # own answer through the response model cost more than the rest of the route.
    return JSONResponse({
        "model": result.model, "version": result.version,
        "predictions": [{"top": [{"label": lb, "score": _finite(s)}
                                 for lb, s in zip(p.labels, p.scores, strict=False)],
                         "unknown": p.is_unknown, "ood_score": _finite(p.ood_score)}
                        for p in result.predictions],
    })


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: null, as pydantic writes them."""
    return value if math.isfinite(value) else None
