"""The trainer's only connection to Redis, on a background thread, so that a
Redis outage never stalls or stops training.

It carries: the job hash (latest fields win), events (state and checkpoint
events kept; progress events dropped when too many pile up), eval requests
(kept until Redis accepts them: the rq job id ``eval-<job>-<step>``, from
``incept.queues.eval_request_id``, makes a retry a no-op) and the cancel flag (polled). While Redis is down it retries with
exponential backoff; unsent eval requests at exit are logged: the evaluator's
reconciler finds checkpoints that never got one."""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time

import redis

from incept.jobstate import JobState
from incept.queues import connect, enqueue_eval, enqueue_prepare

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
MAX_PROGRESS_EVENTS = 1000


class RedisLink:
    def __init__(self, redis_url: str, job_id: str, *, poll_s: float = 0.5,
                 timeout_s: float = 3.0):
        self.job_id = job_id
        self.poll_s = poll_s
        self._conn = connect(redis_url, timeout_s=timeout_s)
        self._state = JobState(self._conn)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._fields: dict = {}
        self._phases: list[str] = []
        self._prepare = False
        self._events: collections.deque = collections.deque()
        self._evals: list[int] = []
        self.sent_evals: list[int] = []
        self.cancel_requested = threading.Event()
        self._backoff = 0.0
        self._deadline = float("inf")
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"redis-link-{job_id}", daemon=True)
        self._thread.start()

    # Producer side (the training loop): never blocks on Redis.
    def update(self, **fields) -> None:
        with self._lock:
            self._fields.update(fields)
        self._wake.set()

    def emit(self, kind: str, data: dict) -> None:
        with self._lock:
            if kind == "progress":
                progress = sum(1 for k, _ in self._events if k == "progress")
                if progress >= MAX_PROGRESS_EVENTS:
                    return
            self._events.append((kind, data))
        self._wake.set()

    def advance_phase(self, phase: str) -> None:
        with self._lock:
            self._phases.append(phase)
        self._wake.set()

    def request_prepare(self) -> None:
        """Ask the evaluator to get ready for this job (``queues.enqueue_prepare``)."""
        with self._lock:
            self._prepare = True
        self._wake.set()

    def request_eval(self, step: int) -> None:
        with self._lock:
            self._evals.append(int(step))
        self._wake.set()

    @property
    def pending_evals(self) -> list[int]:
        with self._lock:
            return list(self._evals)

    def close(self, timeout_s: float = 10.0) -> list[int]:
        """Flush what is pending for up to ``timeout_s``; returns unsent eval steps."""
        self._deadline = time.monotonic() + timeout_s
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s + 1.0)
        unsent = self.pending_evals
        if unsent:
            log.warning("Redis unreachable: eval requests for steps %s not sent; the evaluator's "
                        "reconciler will pick those checkpoints up", unsent)
        with contextlib.suppress(redis.RedisError):
            self._conn.close()
        return unsent

    # The background thread.
    def _run(self) -> None:
        while True:
            closing = self._closing.is_set()
            try:
                self._flush()
                self._poll_cancel()
                if self._down_since is not None:
                    log.warning("Redis reachable again after %.0f s", time.monotonic() - self._down_since)
                self._down_since, self._backoff = None, 0.0
                if closing:
                    return
            except (redis.RedisError, OSError) as e:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("Redis unreachable (%s); training goes on, retrying with backoff", e)
                self._backoff = min(MAX_BACKOFF_S, max(0.25, self._backoff * 2))
            if closing and time.monotonic() >= self._deadline:
                return  # give up; the reconciler covers unsent eval requests
            wait = self._backoff or self.poll_s
            if closing:
                # While closing, retry quickly until close()'s timeout gives up on us.
                wait = min(wait, 0.5)
            self._wake.wait(wait)
            self._wake.clear()

    def _flush(self) -> None:
        with self._lock:
            fields, self._fields = self._fields, {}
            # Only events queued before this field snapshot: an event must never
            # reach Redis before the hash update made ahead of it (a reader who
            # sees "succeeded" on the stream must see it in the hash too).
            ready = len(self._events)
        if fields:
            try:
                self._state.update(self.job_id, **fields)
            except BaseException:
                with self._lock:
                    self._fields = {**fields, **self._fields}
                raise
        while True:
            with self._lock:
                if not self._phases:
                    break
                phase = self._phases[0]
            self._state.advance_phase(self.job_id, phase)
            with self._lock:
                self._phases.pop(0)
        for _ in range(ready):
            with self._lock:
                if not self._events:
                    break
                kind, data = self._events[0]
            self._state.emit(self.job_id, kind, data)
            with self._lock:
                self._events.popleft()
        if self._prepare:
            enqueue_prepare(self._conn, self.job_id)
            self._prepare = False
        while True:
            with self._lock:
                if not self._evals:
                    break
                step = self._evals[0]
            enqueue_eval(self._conn, self.job_id, step)
            with self._lock:
                self._evals.pop(0)
                self.sent_evals.append(step)

    def _poll_cancel(self) -> None:
        if not self.cancel_requested.is_set() and self._state.cancel_requested(self.job_id):
            self.cancel_requested.set()
