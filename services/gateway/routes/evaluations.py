"""A job's evaluations image by image: the validation photos' outcomes at a
step (the page's gallery of mistakes and of unusual photos) and their thumbnails."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from services.gateway import jobview
from services.gateway.deps import Authorized, JobId, LayoutDep
from services.gateway.errors import NotFound
from services.gateway.schemas import ErrorBody, EvalImages

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=Authorized,
                   responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}})


@router.get("/{job_id}/evaluations/{step}/images", response_model=EvalImages)
def evaluation_images(
    job_id: JobId, step: int, layout: LayoutDep,
    true: Annotated[int | None, Query(ge=0, description="Only images of this true class (index).")] = None,
    predicted: Annotated[int | None, Query(ge=0, description="Only images predicted as this class.")] = None,
    wrong: Annotated[bool, Query(description="Only misclassified images.")] = False,
    sort: Annotated[Literal["loss", "ood"], Query(description="Highest loss or open-set score first.")] = "loss",
    limit: Annotated[int, Query(ge=1, le=500)] = 48,
):
    found = jobview.eval_images(layout, job_id, step, true=true, predicted=predicted,
                                wrong_only=wrong, sort=sort, limit=limit)
    if found is None:
        raise NotFound(f"job {job_id} has no per-image results for step {step}")
    return found


@router.get("/{job_id}/thumbnails/{key}.jpg", response_class=FileResponse,
            responses={200: {"content": {"image/jpeg": {}}}})
def job_thumbnail(job_id: JobId, key: str, layout: LayoutDep):
    """A thumbnail from the job's dataset (keys are in the per-image results)."""
    path = jobview.job_thumbnail(layout, job_id, key)
    if path is None:
        raise NotFound(f"no thumbnail {key!r} in job {job_id}'s dataset")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
