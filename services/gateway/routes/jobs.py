"""Training jobs: submit, list, inspect, follow live (server-sent events), cancel."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Header, Request
from sse_starlette import EventSourceResponse

from services.gateway import event_stream, jobview, service
from services.gateway.deps import (
    Authorized,
    JobId,
    JobStateDep,
    LauncherDep,
    LayoutDep,
    RedisDep,
    SettingsDep,
)
from services.gateway.schemas import ErrorBody, JobCreated, JobDetail, JobList

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=Authorized,
                   responses={401: {"model": ErrorBody}})


@router.post("", status_code=202, response_model=JobCreated,
             responses={400: {"model": ErrorBody}, 422: {"model": ErrorBody},
                        503: {"model": ErrorBody}})
def submit_job(request: Request, layout: LayoutDep, state: JobStateDep, launcher: LauncherDep,
               conn: RedisDep, settings: SettingsDep,
               spec: Annotated[dict[str, Any], Body(description="A job spec (incept.spec.JobSpec).")],
               idempotency_key: Annotated[str | None, Header(
                   max_length=200, description="A retry with the same key and spec returns the "
                   "same job (for 24 h) instead of training it twice.")] = None):
    job_id = service.submit_job(layout, state, launcher, conn, settings, spec, idempotency_key)
    return JobCreated(job_id=job_id, url=str(request.url_for("get_job", job_id=job_id)),
                      state="queued")


@router.get("", response_model=JobList)
def list_jobs(layout: LayoutDep, state: JobStateDep):
    return {"jobs": jobview.list_jobs(layout, state)}


@router.get("/{job_id}", response_model=JobDetail, responses={404: {"model": ErrorBody}})
def get_job(job_id: JobId, layout: LayoutDep, state: JobStateDep, request: Request):
    job = service.job_detail(layout, state, request.app.state.launcher, job_id)
    tensorboard = request.app.state.settings.tensorboard_url
    if tensorboard:  # its runs are runs/<job id>/train and /eval: filter on the job's id
        job["tensorboard_url"] = f"{tensorboard.rstrip('/')}/?runFilter={quote(job_id)}#timeseries"
    return job


@router.delete("/{job_id}", status_code=202, response_model=JobDetail,
               responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
def cancel_job(job_id: JobId, layout: LayoutDep, state: JobStateDep, launcher: LauncherDep):
    return service.cancel_job(layout, state, launcher, job_id)


@router.get("/{job_id}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "Server-sent events: state, progress, checkpoint, "
                                            "eval, export, error; once training is over, waiting "
                                            "(checkpoints still being evaluated) and finally end"},
                       404: {"model": ErrorBody}})
async def job_events(job_id: JobId, request: Request, layout: LayoutDep, state: JobStateDep,
                     last_event_id: Annotated[str | None, Header()] = None):
    """The job's event stream, from ``Last-Event-ID`` on. It stays open after
    training ends until every checkpoint has its evaluation outcome (the
    evaluator works on the last checkpoints after the trainer is done) and its
    events were sent, then says ``end`` and closes. Each stream is open at most
    ``event_stream_max_s`` (the client reconnects with ``Last-Event-ID``), and a
    gateway holds at most ``max_event_streams`` (429 beyond)."""
    after = event_stream.stream_position(last_event_id)
    app_state = request.app.state
    return await event_stream.open_job_events(
        layout, state, app_state.async_redis, app_state.event_streams,
        app_state.settings.event_stream_max_s, job_id, after, request.is_disconnected)
