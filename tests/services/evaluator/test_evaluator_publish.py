"""Publishing results to Redis exactly once per (job, step): repeated, raced
and out-of-order publishes on a real Redis, from result files on disk."""

from __future__ import annotations

import threading

from incept.fsutil import write_json_atomic
from incept.jobstate import JobState, recorded_markers
from services.evaluator.evaluate import publish
from services.evaluator.reconciler import republish


def result(step: int, accuracy: float, version: int | None = None) -> dict:
    return {"job_id": "pub", "step": step, "accuracy": accuracy, "recall_at_5": 1.0,
            "loss": 1.0 - accuracy, "num_images": 10, "ece": 0.1, "ood": None,
            "blessed": version is not None, "exported_version": version,
            "served_model": "petals" if version is not None else None}


def events(conn, kind: str) -> list[dict]:
    return [d for _, k, d in JobState(conn).events("pub", count=10_000) if k == kind]


def test_publish_once_whoever_asks(layout, redis_conn):
    run = layout.run("pub")
    assert publish(redis_conn, run, result(10, 0.5, version=1))
    assert not publish(redis_conn, run, result(10, 0.5, version=1))  # a repeat writes nothing
    # Racing publishers of one result: exactly one of them writes.
    wins = []
    threads = [threading.Thread(target=lambda: wins.append(publish(redis_conn, run, result(20, 0.7, 2))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    assert [d["step"] for d in events(redis_conn, "eval")] == [10, 20]
    assert [(d["version"], d["step"]) for d in events(redis_conn, "export")] == [(1, 10), (2, 20)]
    assert recorded_markers(redis_conn, "pub") == {"eval:10", "eval:20"}


def test_late_publish_does_not_roll_the_job_back(layout, redis_conn):
    run = layout.run("pub")
    publish(redis_conn, run, result(30, 0.9, version=3))
    publish(redis_conn, run, result(20, 0.6))       # finished during an outage, published late
    publish(redis_conn, run, result(10, 0.9, version=1))  # ties the best at an earlier step
    job = JobState(redis_conn).get("pub")
    assert job["latest_eval"]["step"] == 30
    assert (job["best"]["step"], job["best"]["accuracy"]) == (10, 0.9)
    assert job["exported_versions"] == [1, 3] and job["served_model"] == "petals"


def test_best_is_the_highest_accuracy_then_the_lowest_loss_then_the_earliest_step(
        layout, redis_conn):
    run = layout.run("pub")
    results = [{**result(10, 0.9), "loss": 0.3}, {**result(20, 0.9), "loss": 0.2},
               {**result(30, 0.9), "loss": 0.2}, {**result(40, 0.8), "loss": 0.1}]
    for r in reversed(results):  # the order Redis hears of them does not matter
        publish(redis_conn, run, r)
        write_json_atomic(run.eval_result(r["step"]), r)
    assert JobState(redis_conn).get("pub")["best"] == {"step": 20, "accuracy": 0.9, "loss": 0.2}
    assert run.best_evaluation()["step"] == 20  # the volume's answer is the same


def test_republish_sends_what_redis_missed(layout, redis_conn):
    run = layout.run("pub")
    for step, acc in ((1, 0.4), (2, 0.8), (3, 0.7)):
        write_json_atomic(run.eval_result(step), result(step, acc, version=step if step < 3 else None))
    publish(redis_conn, run, result(2, 0.8, version=2))  # only step 2 reached Redis
    assert republish(layout, redis_conn) == [("pub", 1), ("pub", 3)]
    assert republish(layout, redis_conn) == []
    assert sorted(d["step"] for d in events(redis_conn, "eval")) == [1, 2, 3]
    job = JobState(redis_conn).get("pub")
    assert job["latest_eval"]["step"] == 3 and job["best"]["step"] == 2
    assert job["exported_versions"] == [1, 2]
