"""A job's live events as server-sent events (``GET /v1/jobs/{id}/events``):
where a client resumes (``Last-Event-ID``), the cap on open streams and their
lifetime, and when a job's stream ends (training over and every checkpoint's
evaluation outcome sent)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import redis
import redis.asyncio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from incept.jobstate import STREAM_MAXLEN, TERMINAL_STATES, JobState, read_events
from incept.layout import Layout
from services.gateway import jobview, service
from services.gateway.errors import ApiError
from services.gateway.slots import Slots

log = logging.getLogger(__name__)

SSE_POLL_MS = 1000
KEEP_ALIVE = ServerSentEvent(comment="keep-alive")
_NO_PING_S = 24 * 3600
_STREAM_ID_MAX = 2**64 - 1

Event = tuple[str, str, dict]  # (stream id, kind, data)
Outcome = tuple[str, int]  # (kind, step) of an eval, export or error event


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


async def open_job_events(layout: Layout, state: JobState, async_redis: redis.asyncio.Redis,
                          streams: Slots, lifetime_s: float, job_id: str, after: str,
                          disconnected: Callable[[], Awaitable[bool]]) -> EventSourceResponse:
    """The response streaming ``job_id``'s events after ``after``: NotFound for
    an unknown job, 429 when ``streams`` are all taken; it closes after
    ``lifetime_s`` (the client reconnects with ``Last-Event-ID``)."""
    await run_in_threadpool(service.find_job, layout, state, job_id, full=False)
    lease = streams.take()
    deadline = time.monotonic() + lifetime_s
    follower = JobFollower(layout, state, async_redis, job_id, after)

    async def released() -> AsyncIterator[ServerSentEvent]:
        try:
            async for event in follower.events(deadline, disconnected):
                yield event
        finally:
            lease.release()

    # The stream sends its own keep-alive every poll round, so no extra pings; the
    # background task releases a stream that never started (a client gone at once).
    return EventSourceResponse(released(), sep="\n", ping=_NO_PING_S,
                               background=BackgroundTask(lease.release))


class JobFollower:
    """One stream's view of a job: how far it has read, and once training is
    over, which evaluation outcomes the client has been sent."""

    def __init__(self, layout: Layout, state: JobState, async_redis: redis.asyncio.Redis,
                 job_id: str, after: str):
        self.layout = layout
        self.state = state
        self.async_redis = async_redis
        self.job_id = job_id
        self.after = after
        self.final_state: str | None = None  # set once training is over
        self.announced: set[Outcome] | None = None  # outcome events sent so far
        self.waiting: list[int] | None = None  # the steps the last ``waiting`` event named

    async def events(self, deadline: float,
                     disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(retry=2000)
        while time.monotonic() < deadline and not await disconnected():
            try:  # asyncio Redis: a blocked read holds no thread of the pool
                events = await read_events(self.async_redis, self.job_id, self.after, SSE_POLL_MS)
            except redis.RedisError:
                yield ServerSentEvent(json.dumps({"error": "redis unavailable"}), event="error")
                await asyncio.sleep(2)
                continue
            for eid, kind, data in events:
                self._sent(eid, kind, data)
                yield ServerSentEvent(json.dumps(data), event=kind, id=eid)
            if events:
                continue  # drain what is queued before looking at the volume
            event, last = await self._when_quiet()
            yield event
            if last:
                return

    def _sent(self, eid: str, kind: str, data: dict) -> None:
        self.after = eid
        if kind == "state":
            self.final_state = data.get("state") if data.get("state") in TERMINAL_STATES else None
        if self.announced is not None:
            self.announced |= _outcome_events([(eid, kind, data)])

    async def _when_quiet(self) -> tuple[ServerSentEvent, bool]:
        """(what to send when no event is queued, whether it is the last): a
        keep-alive while training runs; after it, ``waiting`` each time the
        steps still waiting for their evaluation change, and ``end`` when none is."""
        if self.final_state is None:
            job = await run_in_threadpool(jobview.job_summary, self.layout, self.state, self.job_id)
            if job and job["state"] in TERMINAL_STATES:
                self.final_state = job["state"]  # its state event is gone (a flushed Redis)
        if self.final_state is None:
            return KEEP_ALIVE, False
        try:
            settled, pending = await self._check_evaluations()
        except (OSError, redis.RedisError) as e:  # look again on the next round
            log.warning("job %s: cannot check its evaluations: %s", self.job_id, e)
            return KEEP_ALIVE, False
        if not pending:
            return ServerSentEvent(json.dumps({"state": self.final_state, **settled}),
                                   event="end"), True
        if pending == self.waiting:
            return KEEP_ALIVE, False
        self.waiting = pending
        body = {"state": self.final_state, "pending_evaluations": pending}
        return ServerSentEvent(json.dumps(body), event="waiting"), False

    async def _check_evaluations(self) -> tuple[dict, list[int]]:
        if self.announced is None:  # events sent before this connection count too
            history = await run_in_threadpool(_history, self.state, self.job_id, self.after)
            self.announced = _outcome_events(history)
        return await run_in_threadpool(_evaluations_left, self.layout, self.job_id, self.announced)


def _history(state: JobState, job_id: str, upto: str) -> list[Event]:
    if upto == "0-0":
        return []
    return [e for e in state.events(job_id, "0-0", count=STREAM_MAXLEN)
            if tuple(map(int, e[0].split("-"))) <= tuple(map(int, upto.split("-")))]


def _outcome_events(events: list[Event]) -> set[Outcome]:
    return {(kind, data["step"]) for _eid, kind, data in events
            if kind in ("eval", "export", "error") and isinstance(data.get("step"), int)}


def _evaluations_left(layout: Layout, job_id: str,
                      announced: set[Outcome]) -> tuple[dict, list[int]]:
    """({evaluated, failed} steps, steps still waiting): a checkpoint waits for
    its outcome on the volume, and then for that outcome's events to be sent (the
    evaluator publishes both results and failures, and its reconciler publishes
    again whatever Redis lost)."""
    outcomes = jobview.checkpoint_outcomes(layout, job_id)
    pending = [o.step for o in outcomes if o.outcome is None or not o.events <= announced]
    settled = {kind: [o.step for o in outcomes if o.outcome == kind]
               for kind in ("evaluated", "failed")}
    return settled, pending
