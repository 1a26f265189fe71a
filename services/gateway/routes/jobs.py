"""Training jobs: submit, list, inspect, follow live (server-sent events), cancel."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Annotated, Any
from urllib.parse import quote

import redis
from fastapi import APIRouter, Body, Header, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from incept.jobstate import STREAM_MAXLEN, TERMINAL_STATES, read_events
from services.gateway import jobview, service
from services.gateway.deps import (
    Authorized,
    JobId,
    JobStateDep,
    LauncherDep,
    LayoutDep,
    RedisDep,
    SettingsDep,
)
from services.gateway.errors import ApiError
from services.gateway.schemas import ErrorBody, JobCreated, JobDetail, JobList

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=Authorized,
                   responses={401: {"model": ErrorBody}})

log = logging.getLogger(__name__)

SSE_POLL_MS = 1000
_KEEP_ALIVE = ServerSentEvent(comment="keep-alive")
_NO_PING_S = 24 * 3600


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
    after = stream_position(last_event_id)
    await run_in_threadpool(service.find_job, layout, state, job_id, full=False)
    app_state = request.app.state
    lease = app_state.event_streams.take()
    deadline = time.monotonic() + app_state.settings.event_stream_max_s

    async def stream():
        nonlocal after
        yield ServerSentEvent(retry=2000)
        final_state: str | None = None  # set once training is over
        announced: set[tuple[str, int]] | None = None  # (kind, step) of outcome events sent so far
        waiting: list[int] | None = None
        while time.monotonic() < deadline and not await request.is_disconnected():
            try:  # asyncio Redis: a blocked read holds no thread of the pool
                events = await read_events(app_state.async_redis, job_id, after, SSE_POLL_MS)
            except redis.RedisError:
                yield ServerSentEvent(json.dumps({"error": "redis unavailable"}), event="error")
                await asyncio.sleep(2)
                continue
            for eid, kind, data in events:
                after = eid
                yield ServerSentEvent(json.dumps(data), event=kind, id=eid)
                if kind == "state":
                    final_state = data.get("state") if data.get("state") in TERMINAL_STATES else None
                if announced is not None:
                    announced |= _outcome_events([(eid, kind, data)])
            if events:
                continue  # drain what is queued before looking at the volume
            if final_state is None:
                job = await run_in_threadpool(jobview.job_summary, layout, state, job_id)
                if job and job["state"] in TERMINAL_STATES:
                    final_state = job["state"]  # its state event is gone (a flushed Redis)
            if final_state is not None:
                try:
                    if announced is None:  # events sent before this connection count too
                        history = await run_in_threadpool(_history, state, job_id, after)
                        announced = _outcome_events(history)
                    settled, pending = await run_in_threadpool(_evaluations_left, layout, job_id,
                                                               announced)
                except (OSError, redis.RedisError) as e:  # look again on the next round
                    log.warning("job %s: cannot check its evaluations: %s", job_id, e)
                    yield _KEEP_ALIVE
                    continue
                if not pending:
                    yield ServerSentEvent(json.dumps({"state": final_state, **settled}), event="end")
                    return
                if pending != waiting:
                    waiting = pending
                    body = {"state": final_state, "pending_evaluations": pending}
                    yield ServerSentEvent(json.dumps(body), event="waiting")
                    continue
            yield _KEEP_ALIVE

    async def released():
        try:
            async for event in stream():
                yield event
        finally:
            lease.release()

    # The stream sends its own keep-alive every poll round, so no extra pings; the
    # background task releases a stream that never started (a client gone at once).
    return EventSourceResponse(released(), sep="\n", ping=_NO_PING_S,
                               background=BackgroundTask(lease.release))


_STREAM_ID_MAX = 2**64 - 1


def stream_position(last_event_id: str | None) -> str:
    """The Redis stream id to read after: what the client last saw, or the start.
    Each half of an id is a 64-bit integer; Redis refuses anything else, so a
    malformed id is the client's error (400), not a stream that keeps failing."""
    if not last_event_id:
        return "0-0"
    match = re.fullmatch(r"(\d{1,20})-(\d{1,20})", last_event_id)
    if not match or any(int(part) > _STREAM_ID_MAX for part in match.groups()):
        raise ApiError("Last-Event-ID is not an event id of this stream "
                       "(two 64-bit integers joined by '-')")
    return last_event_id


def _history(state, job_id: str, upto: str) -> list[tuple[str, str, dict]]:
    if upto == "0-0":
        return []
    return [e for e in state.events(job_id, "0-0", count=STREAM_MAXLEN)
            if tuple(map(int, e[0].split("-"))) <= tuple(map(int, upto.split("-")))]


def _outcome_events(events) -> set[tuple[str, int]]:
    return {(kind, data["step"]) for _eid, kind, data in events
            if kind in ("eval", "export", "error") and isinstance(data.get("step"), int)}


def _evaluations_left(layout, job_id: str,
                      announced: set[tuple[str, int]]) -> tuple[dict, list[int]]:
    """({evaluated, failed} steps, steps still waiting): a checkpoint waits for
    its outcome on the volume, and then for that outcome's events to be sent (the
    evaluator publishes both results and failures, and its reconciler publishes
    again whatever Redis lost)."""
    outcomes = jobview.checkpoint_outcomes(layout, job_id)
    pending = [o.step for o in outcomes if o.outcome is None or not o.events <= announced]
    settled = {kind: [o.step for o in outcomes if o.outcome == kind]
               for kind in ("evaluated", "failed")}
    return settled, pending
