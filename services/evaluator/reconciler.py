"""The reconciler: no checkpoint goes unevaluated.

It scans ``runs/*/checkpoints`` for complete checkpoints that have neither a
result (``eval/<step>.json``), nor an error record, nor a live request, and
asks for them again. That covers a trainer that could not enqueue, a flushed
queue or a lost Redis, and a worker killed mid-evaluation (its request stays
"started" in rq, but its per-checkpoint lock expires within seconds).

Each pass also republishes to Redis every result and error record on disk that
Redis has not recorded (``republish``; an evaluation that finished while Redis
was away, or a Redis that lost its data), exactly once per (job, step) -- see
``services.evaluator.evaluate``. Giving up on a checkpoint goes through the
evaluator's own failure recording (record and ``error`` event). The thread
outlives Redis outages: a pass that cannot reach Redis is logged in one line
and the next pass tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from incept.layout import Layout, RunLayout
from incept.queues import EVAL_QUEUE, enqueue_eval, eval_request_id, fetch_request, rq_queue
from services.evaluator.locks import eval_lock_name, held_lock, is_locked, lock_ttl_s

# A record reader of the run folder, and the publisher that sends that record to Redis.
_Reader = Callable[[int], dict[str, Any] | None]
_Publisher = Callable[[redis.Redis, RunLayout, dict[str, Any]], bool]
log = logging.getLogger(__name__)

RECONCILER_LOCK = "incept:lock:reconciler"
# Requests the reconciler replaces (failed, abandoned, finished without a result)
# per checkpoint before it records the checkpoint as failed and stops asking.
MAX_REDOS = 3
REDO_COUNTER_TTL_S = 7 * 24 * 3600
_WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


def _fetch(conn: redis.Redis, request_id: str) -> Job | None:
    try:
        return fetch_request(conn, request_id)
    except NoSuchJobError:
        return None


def _abandoned(job: Job) -> bool:
    started = job.started_at
    if started is None:
        return False
    # The lock is taken within moments of starting and is already gone (checked
    # by the caller); a start older than two lock lifetimes means a dead worker.
    return time.time() - started.timestamp() > 2 * lock_ttl_s()


def _orphaned(conn: redis.Redis, job: Job) -> bool:
    """Queued, yet in no queue: a worker took it (rq moves it to the queue's
    intermediate list) and died before marking it started. rq's own maintenance
    fails such a job only after two of its passes (ten minutes apart by default).
    The caller has checked that no live worker holds the checkpoint's lock; the age
    rule leaves a request that a live worker took a moment ago alone."""
    queue = rq_queue(conn, EVAL_QUEUE)
    if queue.get_job_position(job.id) is not None:
        return False
    enqueued = job.enqueued_at
    return enqueued is not None and time.time() - enqueued.timestamp() > 2 * lock_ttl_s()


def reconcile(layout: Layout, conn: redis.Redis) -> list[tuple[str, int]]:
    """One pass; returns the (job, step) pairs it asked for."""
    from incept.checkpoints import list_checkpoints
    asked: list[tuple[str, int]] = []
    if not layout.runs.is_dir():
        return asked
    with held_lock(conn, RECONCILER_LOCK, blocking=False) as acquired:
        if not acquired:
            return asked  # another evaluator is reconciling right now
        for run in layout.all_runs():
            settled = run.evaluated_steps() | run.failed_steps()
            for step in list_checkpoints(run):
                if step in settled or is_locked(conn, eval_lock_name(run.job_id, step)):
                    continue
                request = _fetch(conn, eval_request_id(run.job_id, step))
                if request is not None:
                    status = request.get_status()
                    orphaned = status == JobStatus.QUEUED and _orphaned(conn, request)
                    if (status in _WAITING and not orphaned) or (
                            status == JobStatus.STARTED and not _abandoned(request)):
                        continue
                    # Finished without a result (it found the checkpoint busy, and that
                    # worker died), failed, or abandoned: replace it with a fresh request,
                    # a bounded number of times.
                    if _redos_exhausted(conn, run, step, status):
                        continue
                    if orphaned:
                        rq_queue(conn, EVAL_QUEUE).intermediate_queue.remove(request.id)
                    request.delete()
                if enqueue_eval(conn, run.job_id, step):
                    log.info("reconciler: asked for an evaluation of %s step %d", run.job_id, step)
                    asked.append((run.job_id, step))
        republish(layout, conn)
    return asked


def republish(layout: Layout, conn: redis.Redis) -> list[tuple[str, int]]:
    """Publish every result and error record on disk that Redis has no record of
    (it was away, or lost its data); returns the (job, step) pairs this call published."""
    from incept.jobstate import recorded_markers
    from services.evaluator.evaluate import publish, publish_failure

    published: list[tuple[str, int]] = []
    for run in layout.all_runs():
        evaluated, failed = run.evaluated_steps(), run.failed_steps()
        if not evaluated and not failed:
            continue
        recorded = recorded_markers(conn, run.job_id)
        todo: list[tuple[str, int, _Reader, _Publisher]] = [
            (f"eval:{s}", s, run.read_eval, publish) for s in sorted(evaluated)]
        todo += [(f"error:{s}", s, run.read_eval_error, publish_failure)
                 for s in sorted(failed - evaluated)]
        for marker, step, read, publish_record in todo:
            if marker in recorded:
                continue
            record = read(step)
            try:
                done = record is not None and publish_record(conn, run, record)
            except (KeyError, TypeError, ValueError) as e:
                log.warning("reconciler: the %s record of %s step %d is not one this evaluator "
                            "wrote (%r)", marker.split(":")[0], run.job_id, step, e)
                continue
            if done:
                log.info("reconciler: published the %s of %s step %d to Redis",
                         "result" if marker.startswith("eval") else "failure", run.job_id, step)
                published.append((run.job_id, step))
    return published


def _redos_exhausted(conn: redis.Redis, run, step: int, status) -> bool:
    from services.evaluator.evaluate import record_failure

    key = f"incept:eval-redos:{run.job_id}:{int(step)}"
    redos = conn.incr(key)
    conn.expire(key, REDO_COUNTER_TTL_S)
    if redos <= MAX_REDOS:
        return False
    reason = (f"gave up after {MAX_REDOS} repeated requests (last one {status}); "
              "see the evaluator's log")
    log.error("reconciler: job %s step %d: %s", run.job_id, step, reason)
    record_failure(conn, run, step, reason)
    return True


class Reconciler(threading.Thread):
    """Runs ``reconcile`` at start and then every ``interval_s`` seconds."""

    def __init__(self, layout: Layout, conn: redis.Redis, interval_s: float):
        super().__init__(name="reconciler", daemon=True)
        self.layout, self.conn, self.interval_s = layout, conn, interval_s
        self.stopping = threading.Event()

    def run(self) -> None:
        redis_lost = False
        while True:
            try:
                reconcile(self.layout, self.conn)
                if redis_lost:
                    log.info("reconciler: Redis is back")
                redis_lost = False
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if not redis_lost:
                    log.warning("reconciler: Redis is unavailable (%s); trying again every %.0f s",
                                e, self.interval_s)
                redis_lost = True
            except Exception:  # keep reconciling: one bad pass must not end the loop
                log.exception("reconciler pass failed")
            if self.stopping.wait(self.interval_s):
                return

    def stop(self) -> None:
        self.stopping.set()
