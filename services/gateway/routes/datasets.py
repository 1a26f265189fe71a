"""Datasets: upload an archive of class folders (converted by a queued job), list, inspect."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from services.gateway import service
from services.gateway.deps import (
    Authorized,
    DatasetName,
    LayoutDep,
    NewDatasetName,
    RedisDep,
    SettingsDep,
)
from services.gateway.errors import ApiError, NotFound
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
    report = await service.upload_dataset(layout, conn, settings, request.app.state.upload_slots,
                                          name, request.stream())
    return DatasetAccepted(name=name, state="converting", files=report.files,
                           url=str(request.url_for("get_dataset", name=name)))
