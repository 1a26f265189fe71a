"""The job spec's JSON schema and the presets, for forms (the page builds its
new-job form from them)."""

from __future__ import annotations

from fastapi import APIRouter

from incept.presets import PRESETS
from incept.spec import JobSpec

router = APIRouter(prefix="/v1/schemas", tags=["schemas"])


@router.get("/job")
def job_schema() -> dict:
    """The JSON schema of a job spec (POST /v1/jobs), with named presets."""
    return {"schema": JobSpec.model_json_schema(), "presets": PRESETS}
