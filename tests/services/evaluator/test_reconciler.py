"""The reconciler's decisions, one pass at a time (real Redis, real rq jobs,
real checkpoints)."""

from __future__ import annotations

import pytest
from evaluator_helpers import RunWriter, make_dataset

from incept.fsutil import write_json_atomic
from incept.jobstate import JobState
from incept.queues import enqueue_eval, eval_request_id, fetch_request
from services.evaluator.locks import eval_lock_name
from services.evaluator.reconciler import reconcile


@pytest.fixture
def writer(layout, tmp_path):
    make_dataset(layout, tmp_path)
    w = RunWriter(layout, "rec")
    for step in (1, 2, 3, 4, 5):
        w.save(step)
    return w


def test_one_pass(layout, redis_conn, writer):
    run = writer.run
    write_json_atomic(run.eval_result(1), {"step": 1, "accuracy": 0.5})       # done
    write_json_atomic(run.eval_error(2), {"step": 2, "error": "bad"})          # failed for good
    assert enqueue_eval(redis_conn, "rec", 3)                                  # pending
    redis_conn.set(eval_lock_name("rec", 4), "someone")                        # in progress
    # Step 5 was never requested; a stray partial checkpoint (no data) is not complete.
    (run.checkpoints / "ckpt-6.index").write_bytes(b"partial")

    assert reconcile(layout, redis_conn) == [("rec", 5)]
    assert reconcile(layout, redis_conn) == []  # now pending

    # A request that finished without a result (it found the checkpoint busy and
    # that worker died) is replaced once the lock is gone.
    redis_conn.delete(eval_lock_name("rec", 4))
    job = fetch_request(redis_conn, eval_request_id("rec", 3))
    job.set_status("finished")
    assert sorted(reconcile(layout, redis_conn)) == [("rec", 3), ("rec", 4)]
    assert fetch_request(redis_conn, eval_request_id("rec", 3)).get_status() == "queued"


def test_gives_up_after_repeated_failures(layout, redis_conn, writer):
    from services.evaluator.reconciler import MAX_REDOS

    for step in (1, 2, 3, 4):
        write_json_atomic(writer.run.eval_result(step), {"step": step, "accuracy": 0.5})
    assert reconcile(layout, redis_conn) == [("rec", 5)]
    for _ in range(MAX_REDOS):
        fetch_request(redis_conn, eval_request_id("rec", 5)).set_status("failed")
        assert reconcile(layout, redis_conn) == [("rec", 5)]
    fetch_request(redis_conn, eval_request_id("rec", 5)).set_status("failed")
    assert reconcile(layout, redis_conn) == []
    record = writer.run.read_eval_error(5)
    assert "gave up after" in record["error"]
    # The same failure path as the evaluator's own: the job's error event and field.
    state = JobState(redis_conn)
    errors = [data for _id, kind, data in state.events("rec") if kind == "error"]
    assert errors == [{"source": "evaluator", "step": 5, "error": record["error"]}]
    assert state.get("rec")["eval_error"] == {"step": 5, "error": record["error"]}
    assert reconcile(layout, redis_conn) == []


def test_failures_redis_lost_are_published_again(layout, redis_conn, writer):
    """An error record whose event Redis lost (flushed) is published by the next
    pass, once: the job's event stream hears of every failure."""
    for step in (1, 2, 3, 4):
        write_json_atomic(writer.run.eval_result(step), {"step": step, "accuracy": 0.5})
    write_json_atomic(writer.run.eval_error(5), {"job_id": "rec", "step": 5, "error": "corrupt",
                                                 "failed_at": 1.0})
    reconcile(layout, redis_conn)
    reconcile(layout, redis_conn)
    errors = [data for _id, kind, data in JobState(redis_conn).events("rec") if kind == "error"]
    assert errors == [{"source": "evaluator", "step": 5, "error": "corrupt"}]


def test_request_taken_by_a_worker_that_died_before_starting_it_is_replaced(
        layout, redis_conn, writer, monkeypatch):

    from incept.queues import EVAL_QUEUE, rq_queue

    for step in (1, 2, 3, 4):
        write_json_atomic(writer.run.eval_result(step), {"step": step, "accuracy": 0.5})
    assert enqueue_eval(redis_conn, "rec", 5)
    queue = rq_queue(redis_conn, EVAL_QUEUE)
    # What a worker's dequeue does (into the intermediate list); then it dies
    # before marking the job started.
    queue.lmove(redis_conn, queue.key, timeout=None)
    assert queue.get_job_position(eval_request_id("rec", 5)) is None
    assert reconcile(layout, redis_conn) == []  # just taken: a live worker may be starting it

    monkeypatch.setenv("INCEPT_EVAL_LOCK_TTL_S", "0.05")
    from incept.settings import get_settings

    get_settings.cache_clear()
    try:
        import time

        time.sleep(0.2)
        assert reconcile(layout, redis_conn) == [("rec", 5)]
    finally:
        get_settings.cache_clear()
    assert queue.get_job_position(eval_request_id("rec", 5)) == 0
    assert eval_request_id("rec", 5) not in queue.intermediate_queue.get_job_ids()
