"""The Open Inference Protocol's operations, shared by its REST routes (``/v2``)
and its gRPC service: each takes the app's state (settings, backend, metrics,
layout) and raises the gateway's errors, which each transport turns into its
own error (``{"error": ...}`` with a status, or a gRPC status code)."""

from __future__ import annotations

from incept import __version__
from incept.serving import oip
from services.gateway import serving
from services.gateway.errors import ApiError, TooLarge

EXTENSIONS = ["binary_tensor_data", "model_repository"]


def server_metadata() -> dict:
    return {"name": "incept", "version": __version__, "extensions": EXTENSIONS}


def _version(version: str | None) -> int | None:
    return None if version in (None, "") else serving.parse_version(version)


async def available_versions(state, name: str) -> list[int]:
    status = await state.backend.model_status(name)
    return sorted(v.version for v in status.versions if v.state == "AVAILABLE")


async def server_ready(state) -> bool:
    try:
        ready, _ = await state.backend.ready(state.layout.model_names())
    except ApiError:
        return False
    return ready


async def model_ready(state, name: str, version: str | None) -> bool:
    pinned = _version(version)
    try:
        versions = await available_versions(state, name)
    except ApiError:
        return False
    return bool(versions) and (pinned is None or pinned in versions)


async def model_metadata(state, name: str, version: str | None) -> dict:
    meta = await state.backend.metadata(name, _version(version))
    versions = await available_versions(state, name)
    try:
        return oip.model_metadata(name, versions or [meta.version], meta.signature_def)
    except oip.ProtocolError as e:
        raise ApiError(str(e)) from None


async def repository_index(state) -> list[dict]:
    """Every model on disk with its newest served version (the model repository extension)."""
    out = []
    for name in state.layout.model_names():
        try:
            versions = await available_versions(state, name)
        except ApiError:
            versions = []
        out.append({"name": name, "version": str(versions[-1]) if versions else "",
                    "state": "READY" if versions else "UNAVAILABLE"})
    return out


async def infer(state, name: str, version: str | None, body: bytes,
                header_length: str | None) -> tuple[dict, bytes]:
    """Run one inference request; the response header and its binary data."""
    try:
        request = oip.parse_infer(body, header_length, state.settings.max_images_per_request)
    except oip.TooManyImages as e:
        raise TooLarge(str(e)) from None
    except oip.ProtocolError as e:
        raise ApiError(str(e)) from None
    images = await serving.checked(request.images, state, media_is_400=True)
    result = await serving.predict(state, name, images, _version(version))
    try:
        return oip.infer_response(name, result.version, request, result.outputs)
    except oip.ProtocolError as e:
        raise ApiError(str(e)) from None
