"""Live job state in a real Redis: a finished job's keys expire (the volume
stays the record), a running job's never do, and the job index is bounded."""

from __future__ import annotations

import time

from incept import jobstate
from incept.jobstate import FINISHED_JOB_TTL_S, JOBS_INDEX, JobState, record_once

KEYS = ("incept:job:{id}", "incept:job:{id}:events", "incept:job:{id}:recorded",
        "incept:job:{id}:cancel")


def _ttls(conn, job_id: str) -> list[int]:
    return [conn.ttl(k.format(id=job_id)) for k in KEYS]


def test_a_finished_jobs_keys_expire_and_a_running_jobs_do_not(redis_conn):
    state = JobState(redis_conn)
    state.create("run-1")
    state.set_state("run-1", "running", step=3)
    state.request_cancel("run-1")
    record_once(redis_conn, "run-1", "eval:3", lambda cur: {"best": 0.5}, [("eval", {"step": 3})])
    # Running: nothing of the job's state may vanish (the cancel flag only after a week).
    assert _ttls(redis_conn, "run-1")[:3] == [-1, -1, -1]
    assert 0 < _ttls(redis_conn, "run-1")[3] <= FINISHED_JOB_TTL_S
    state.set_state("run-1", "succeeded")
    assert all(0 < t <= FINISHED_JOB_TTL_S for t in _ttls(redis_conn, "run-1"))
    # An evaluation recorded after the end keeps the expiry (HSET/XADD alone would not set one
    # on keys recreated after they expired).
    for key in KEYS[:3]:
        redis_conn.persist(key.format(id="run-1"))
    assert record_once(redis_conn, "run-1", "eval:4", lambda cur: {"best": 0.6},
                       [("eval", {"step": 4})])
    assert all(0 < t <= FINISHED_JOB_TTL_S for t in _ttls(redis_conn, "run-1")[:3])


def test_the_job_index_is_bounded_by_age_and_count(redis_conn, monkeypatch):
    old = time.time() - jobstate.JOBS_INDEX_RETENTION_S - 60
    redis_conn.zadd(JOBS_INDEX, {"ancient": old})
    monkeypatch.setattr(jobstate, "JOBS_INDEX_MAX", 3)
    state = JobState(redis_conn)
    for i in range(5):
        state.create(f"job-{i}")
    assert state.list_ids() == ["job-4", "job-3", "job-2"]


def test_delete_forgets_a_job_that_never_started(redis_conn):
    state = JobState(redis_conn)
    state.create("never")
    state.request_cancel("never")
    state.delete("never")
    assert state.get("never") is None and "never" not in state.list_ids()
    assert not any(redis_conn.exists(k.format(id="never")) for k in KEYS)
