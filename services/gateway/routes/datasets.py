"""Datasets: upload an archive of class folders (converted by a queued job), list, inspect."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid

import redis
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from incept.queues import enqueue_conversion
from services.gateway import service, uploads
from services.gateway.archives import ExtractReport, Limits, extract_archive
from services.gateway.deps import (
    Authorized,
    DatasetName,
    LayoutDep,
    NewDatasetName,
    RedisDep,
    SettingsDep,
)
from services.gateway.errors import ApiError, Conflict, NotFound
from services.gateway.schemas import DatasetAccepted, DatasetInfoOut, DatasetList, ErrorBody

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=Authorized,
                   responses={401: {"model": ErrorBody}})

ARCHIVE_TYPES = ("application/zip", "application/x-tar", "application/gzip",
                 "application/x-gzip", "application/octet-stream")


@router.get("", response_model=DatasetList)
def list_datasets(layout: LayoutDep, conn: RedisDep):
    return {"datasets": service.list_datasets(layout, conn)}


@router.get("/{name}", response_model=DatasetInfoOut, responses={404: {"model": ErrorBody}})
def get_dataset(name: DatasetName, layout: LayoutDep, conn: RedisDep):
    try:
        d = service.dataset_info(layout, conn, name)
    except ValueError:
        d = None
    if d is None:
        raise NotFound(f"unknown dataset {name!r}")
    return d


@router.get("/{name}/thumbnails/{key}.jpg", response_class=FileResponse,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorBody}})
def dataset_thumbnail(name: DatasetName, key: str, layout: LayoutDep):
    """A small JPEG of one of the dataset's images (the keys are in the dataset's
    ``thumbnails`` and in the evaluator's per-image results)."""
    try:
        path = layout.dataset_thumbnail(name, key)
    except ValueError:
        raise NotFound(f"unknown thumbnail {key!r}") from None
    if not path.is_file():
        raise NotFound(f"dataset {name!r} has no thumbnail {key!r}")
    return FileResponse(path, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400"})


@router.post(
    "", status_code=202, response_model=DatasetAccepted,
    responses={400: {"model": ErrorBody}, 409: {"model": ErrorBody}, 413: {"model": ErrorBody},
               415: {"model": ErrorBody}},
    openapi_extra={"requestBody": {"required": True, "description": "A zip or tar(.gz) of class folders.",
                                   "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                               for t in ARCHIVE_TYPES}}},
)
async def upload_dataset(
    request: Request, layout: LayoutDep, conn: RedisDep, settings: SettingsDep,
    name: NewDatasetName,
):
    content_type = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
    if content_type not in ARCHIVE_TYPES:
        raise ApiError(f"send the archive as the request body with one of: {', '.join(ARCHIVE_TYPES)}",
                       status_code=415)
    if layout.dataset(name).exists():
        raise Conflict(f"dataset {name!r} already exists")
    with request.app.state.upload_slots.slot():
        await run_in_threadpool(uploads.check_free_space, layout, settings)
        # The name is claimed before the body is read: of two uploads of one
        # name exactly one is received and converted, the other is a 409.
        claim = await run_in_threadpool(uploads.claim_name, conn, name)
        try:
            state, _ = await run_in_threadpool(service.conversion_state, conn, name)
            if state == "converting":
                raise Conflict(f"dataset {name!r} is already being converted")
            report = await _receive_and_extract(request, layout, settings)
            try:
                await run_in_threadpool(enqueue_conversion, conn, name, str(report.root))
            except redis.RedisError:
                shutil.rmtree(report.extracted, ignore_errors=True)
                raise ApiError("Redis is unavailable; try again", status_code=503,
                               headers={"Retry-After": "5"}) from None
        finally:
            await run_in_threadpool(uploads.release_name, conn, name, claim)
    return DatasetAccepted(name=name, state="converting", files=report.files,
                           url=str(request.url_for("get_dataset", name=name)))


async def _receive_and_extract(request: Request, layout, settings) -> ExtractReport:
    """The body into uploads/<random>.archive (never a client-chosen name), then
    unpacked next to it; the archive is always removed, the folder on failure."""
    layout.uploads.mkdir(parents=True, exist_ok=True)
    upload_id = uuid.uuid4().hex
    archive = layout.uploads / f"{upload_id}.archive"
    extracted = layout.uploads / upload_id
    try:
        size = await uploads.receive(request.stream(), archive, settings.max_upload_bytes)
        if size == 0:
            raise ApiError("the request body is empty: send a zip or tar archive")
        limits = Limits(settings.max_archive_files, settings.max_unpacked_bytes,
                        settings.max_compression_ratio)
        report = await run_in_threadpool(extract_archive, archive, extracted, limits)
    except BaseException:
        shutil.rmtree(extracted, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(archive)
    return report
