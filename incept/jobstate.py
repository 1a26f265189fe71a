"""Live job state in Redis: a hash per job, an event stream per job, a cancel
flag. The trainer and evaluator write it, the gateway reads it. Results that
must outlive Redis (eval JSON, checkpoints, exports, status.json) are on the
shared volume; this is the live view."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from redis.exceptions import WatchError

if TYPE_CHECKING:
    from incept.layout import RunLayout

STATES = ("queued", "running", "succeeded", "failed", "cancelling", "cancelled")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
STREAM_MAXLEN = 10_000
# Redis keeps a finished job's live state (hash, event stream, markers, cancel
# flag) this long after it finished, then drops it: the shared volume stays the
# record (spec.json, status.json, eval/), and jobview serves a job from there.
FINISHED_JOB_TTL_S = 7 * 24 * 3600
# incept:jobs (newest first) keeps at most this many ids, none older than this;
# older jobs are still listed from runs/ on the volume.
JOBS_INDEX_MAX = 10_000
JOBS_INDEX_RETENTION_S = 30 * 24 * 3600
# Where a job is, for people: its phases only move forward (a late message from
# one service cannot take back what another reported). A job is created
# "queued" (hash field ``phase``); each later phase is announced once by a
# "phase" event {"phase": ...}.
PHASES = ("queued", "features", "training", "evaluating", "exported")
_ADVANCE_PHASE = """
local rank = {}
for i, name in ipairs(cjson.decode(ARGV[4])) do rank[name] = i end
local current = redis.call('HGET', KEYS[1], 'phase')
if current and rank[current] and rank[current] >= rank[ARGV[1]] then return 0 end
redis.call('HSET', KEYS[1], 'phase', ARGV[1], 'updated_at', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', 'phase', 'data', cjson.encode({phase = ARGV[1]}))
return 1
"""


def _job_key(job_id: str) -> str:
    return f"incept:job:{job_id}"


def _events_key(job_id: str) -> str:
    return f"incept:job:{job_id}:events"


def _cancel_key(job_id: str) -> str:
    return f"incept:job:{job_id}:cancel"


def _recorded_key(job_id: str) -> str:
    return f"incept:job:{job_id}:recorded"


JOBS_INDEX = "incept:jobs"


def _encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(value: bytes | str) -> Any:
    text = _text(value)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


class JobState:
    def __init__(self, conn: redis.Redis):
        self.conn = conn

    def create(self, job_id: str, **fields: Any) -> None:
        now = time.time()
        pipe = self.conn.pipeline()
        pipe.zadd(JOBS_INDEX, {job_id: now}, nx=True)
        pipe.zremrangebyscore(JOBS_INDEX, "-inf", now - JOBS_INDEX_RETENTION_S)
        pipe.zremrangebyrank(JOBS_INDEX, 0, -JOBS_INDEX_MAX - 1)
        pipe.hset(_job_key(job_id), mapping={k: _encode(v) for k, v in
                                              {"job_id": job_id, "state": "queued", "phase": "queued",
                                               "created_at": now,
                                               "updated_at": now, **fields}.items()})
        pipe.execute()
        self.emit(job_id, "state", {"state": fields.get("state", "queued")})

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        self.conn.hset(_job_key(job_id), mapping={k: _encode(v) for k, v in fields.items()})

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw: Any = self.conn.hgetall(_job_key(job_id))
        if not raw:
            return None
        return {_text(k): _decode(v) for k, v in raw.items()}

    def list_ids(self, limit: int = 1000) -> list[str]:
        ids: Any = self.conn.zrevrange(JOBS_INDEX, 0, limit - 1)
        return [_text(j) for j in ids]

    def emit(self, job_id: str, kind: str, data: dict[str, Any]) -> str:
        """Append an event to the job's stream; returns its stream id."""
        eid: Any = self.conn.xadd(_events_key(job_id), {"type": kind, "data": json.dumps(data)},
                             maxlen=STREAM_MAXLEN, approximate=True)
        return _text(eid)

    def events(self, job_id: str, after: str = "0-0", block_ms: int | None = None,
               count: int = 100) -> list[tuple[str, str, dict[str, Any]]]:
        """Events after stream id ``after``: (id, type, data). Blocks up to ``block_ms``."""
        return _parse_events(self.conn.xread({_events_key(job_id): after}, count=count,
                                             block=block_ms))

    def set_state(self, job_id: str, state: str, **fields: Any) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        self.update(job_id, state=state, **fields)
        self.emit(job_id, "state", {"state": state, **fields})
        if state in TERMINAL_STATES:
            pipe = self.conn.pipeline()
            _expire_finished(pipe, job_id)
            pipe.execute()

    def delete(self, job_id: str) -> None:
        """Forget a job that never started (its submission failed)."""
        self.conn.delete(*_job_keys(job_id))
        self.conn.zrem(JOBS_INDEX, job_id)

    def advance_phase(self, job_id: str, phase: str) -> bool:
        """Move the job to ``phase`` unless it is there or further already;
        returns whether it moved (and a "phase" event was appended)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        moved = self.conn.eval(_ADVANCE_PHASE, 2, _job_key(job_id), _events_key(job_id), phase,
                               time.time(), STREAM_MAXLEN, json.dumps(PHASES))
        return bool(moved)

    def request_cancel(self, job_id: str) -> None:
        self.conn.set(_cancel_key(job_id), "1", ex=FINISHED_JOB_TTL_S)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.conn.exists(_cancel_key(job_id)))


def _job_keys(job_id: str) -> tuple[str, ...]:
    return (_job_key(job_id), _events_key(job_id), _recorded_key(job_id), _cancel_key(job_id))


def _expire_finished(pipe: redis.client.Pipeline, job_id: str) -> None:
    for key in _job_keys(job_id):
        pipe.expire(key, FINISHED_JOB_TTL_S)


def _parse_events(resp: Any) -> list[tuple[str, str, dict[str, Any]]]:
    return [(_text(eid), _text(fields[b"type"]), json.loads(fields[b"data"]))
            for _key, entries in resp or [] for eid, fields in entries]


async def read_events(aconn: redis.asyncio.Redis, job_id: str, after: str = "0-0",
                      block_ms: int | None = None, count: int = 100) -> list[tuple[str, str, dict[str, Any]]]:
    """``JobState.events`` over an asyncio connection: a client blocked on its
    job's stream holds no thread (the gateway's live event streams)."""
    resp: Any = await aconn.xread({_events_key(job_id): after}, count=count, block=block_ms)
    return _parse_events(resp)


def record_once(conn: redis.Redis, job_id: str, marker: str,
                fields_from: Callable[[dict[str, Any]], dict[str, Any]],
                events: Sequence[tuple[str, dict[str, Any]]]) -> bool:
    """Update the job's hash and append ``events`` to its stream once per (job,
    ``marker``), atomically: the marker (kept in a set beside the hash), the
    fields and the events are all written in one MULTI/EXEC, or nothing is. A
    repeat -- a retry after a lost reply, a republish from disk, a second
    publisher racing the first -- writes nothing. ``fields_from`` computes the
    fields from the current hash (it runs again if the hash changed meanwhile).
    Returns whether this call wrote them."""
    job_key, marks = _job_key(job_id), _recorded_key(job_id)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(marks, job_key)
                if pipe.sismember(marks, marker):
                    return False
                current = {_text(k): _decode(v) for k, v in pipe.hgetall(job_key).items()}
                fields = {**fields_from(current), "updated_at": time.time()}
                pipe.multi()
                pipe.sadd(marks, marker)
                pipe.hset(job_key, mapping={k: _encode(v) for k, v in fields.items()})
                for kind, data in events:
                    pipe.xadd(_events_key(job_id), {"type": kind, "data": json.dumps(data)},
                              maxlen=STREAM_MAXLEN, approximate=True)
                if current.get("state") in TERMINAL_STATES:  # evaluations after the end
                    _expire_finished(pipe, job_id)
                pipe.execute()
                return True
            except WatchError:
                continue  # someone wrote the hash or the marker meanwhile: look again


def all_evaluated(run: RunLayout) -> bool:
    """The trainer succeeded (``runs/<id>/status.json``) and every checkpoint it
    kept has an evaluation result or error record: the job's last phase. The
    trainer asks after writing its final state, the evaluator after writing
    each result, so whichever comes second sees both and moves the phase on."""
    try:
        status = json.loads(run.status.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(status, dict) or status.get("state") != "succeeded":
        return False
    return all(run.eval_result(step).exists() or run.eval_error(step).exists()
               for step in run.complete_checkpoints())


def recorded_markers(conn: redis.Redis, job_id: str) -> set[str]:
    """The markers ``record_once`` has written for the job."""
    return {_text(m) for m in conn.smembers(_recorded_key(job_id))}
