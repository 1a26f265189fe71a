"""What every prediction route does, whichever protocol it speaks: read the body
within the limits, check the images, resolve a version or label, ask the
backend and count the images. The routes only parse their protocol's form and
write its answer."""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from incept.serving.backend import ModelStatus, PredictionBackend
from incept.serving.outputs import PredictResult
from services.gateway.errors import ApiError, BadImage, ModelNotFound, TooLarge, UnsupportedMedia
from services.gateway.images import Images, check_images

# Version labels the gateway resolves itself (TF Serving's come from its model
# config): "latest" is the newest AVAILABLE version.
LABELS = ("latest",)


def parse_version(version: str) -> int:
    if not version.isdigit():
        raise ApiError(f"Failed to convert version: {version[:40]} to numeric.")
    return int(version)


async def resolve(backend: PredictionBackend, name: str, version: str | None,
                  label: str | None) -> int | None:
    """The version a ``/versions/{v}`` or ``/labels/{l}`` path asks for (None: latest)."""
    if version is not None:
        return parse_version(version)
    if label is None:
        return None
    if label not in LABELS:
        raise ApiError(f"Unrecognized servable version label: {label[:80]}")
    available = [v.version for v in (await backend.model_status(name)).versions
                 if v.state == "AVAILABLE"]
    if not available:
        raise ModelNotFound(f"Servable not found for request: Latest({name})")
    return max(available)


def only_version(status: ModelStatus, version: int | None) -> ModelStatus:
    """The status of one version, as TF Serving answers ``/versions/{v}``."""
    versions = [v for v in status.versions if version is None or v.version == version]
    if not versions:
        raise ModelNotFound(f"Could not find version {version} of model {status.name}"
                            if version is not None else
                            f"Could not find any versions of model {status.name}")
    return ModelStatus(status.name, versions)


async def read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the request body is larger than {limit} bytes")
    return bytes(body)


async def checked(images: list[bytes], state, *, media_is_400: bool = False) -> Images:
    """The request-level limits (count, bytes, pixels) on decoded images. TF
    Serving calls an image it cannot decode INVALID_ARGUMENT: its protocol's
    routes answer 400 where the gateway's own says 415."""
    settings = state.settings
    try:
        if sum(len(i) for i in images) < 256 * 1024:
            return check_images(images, settings)
        # parsing big photos' headers must not stall the event loop
        return await run_in_threadpool(check_images, images, settings)
    except UnsupportedMedia as e:
        if media_is_400:
            raise BadImage(e.message) from None
        raise


async def predict(state, name: str, images: Images, version: int | None) -> PredictResult:
    """``state`` is the app's state (settings, backend, metrics, pixel budget)."""
    async with state.pixel_budget.hold(images.pixels, state.settings.backend_timeout_s):
        result = await state.backend.predict(name, images, version)
    state.metrics.predicted_images.labels(model=name).inc(len(images))
    return result
