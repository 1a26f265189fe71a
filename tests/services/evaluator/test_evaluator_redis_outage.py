"""Redis goes away under a real `incept evaluator` process (rq SimpleWorker +
reconciler) and comes back from its append-only file: the process keeps
running, every checkpoint gets exactly one result on disk and exactly one
`eval` event in Redis -- including an evaluation that finished during the
outage and one the outage interrupted. Real Redis server (own port, AOF),
real TensorFlow with the tiny net."""

from __future__ import annotations

import json
import time

import pytest
from evaluator_helpers import RunWriter, make_dataset, start_evaluator, stop, wait_for

from incept.jobstate import JobState
from incept.layout import best_of
from incept.queues import connect, eval_request_id, request_status
from incept.redis_server import RedisServer
from services.evaluator.locks import eval_lock_name, job_lock_name
from services.evaluator.reconciler import republish


def records(run) -> list[str]:
    """The run's result and error records (not the per-image sidecars the gallery reads)."""
    return sorted(p.name for p in run.eval_dir.glob("*.json") if not p.name.endswith(".images.json"))


@pytest.fixture
def redis_box(tmp_path):
    """A persistent Redis the test may stop and start again on the same port."""
    servers = [RedisServer(tmp_path / "redis").start()]
    yield servers
    servers[-1].stop()


def eval_steps(conn, job_id: str) -> list[int]:
    return sorted(d["step"] for _, kind, d in JobState(conn).events(job_id, count=100_000)
                  if kind == "eval")


def restart(servers: list[RedisServer]) -> None:
    old = servers[-1]
    servers.append(RedisServer(old.data_dir, port=old.port).start())


def test_redis_outages_mid_run(layout, tmp_path, redis_box):
    make_dataset(layout, tmp_path)
    url = redis_box[0].url
    writer = RunWriter(layout, "outage")
    for step in (1, 2, 3):
        writer.train(3)
        writer.save(step)
    run = writer.run
    log_path = tmp_path / "ev.log"
    worker = start_evaluator(layout, url, log_path, "ev1")
    conn = connect(url, timeout_s=1.0)
    try:
        # 1. Redis stops while the worker is blessing and exporting its first
        #    checkpoint: from there on it needs no Redis until the result is on
        #    disk, so that evaluation finishes during the outage.
        wait_for(lambda: conn.exists(job_lock_name("outage")), 180, "the first bless", poll_s=0.005)
        redis_box[-1].stop()
        assert records(run) == []
        wait_for(lambda: records(run), 120, "a result written during the outage")
        wait_for(lambda: "lost Redis" in log_path.read_text(errors="replace"), 60,
                 "the worker to notice")
        time.sleep(3)  # a few seconds more of outage: the worker keeps waiting
        restart(redis_box)
        conn = connect(url, timeout_s=1.0)
        for step in (1, 2, 3):
            wait_for(lambda s=step: run.eval_result(s).exists(), 180, f"the result of step {step}")
        wait_for(lambda: eval_steps(conn, "outage") == [1, 2, 3], 60, "the missed eval events")
        assert worker.poll() is None

        # 2. Redis stops while the worker is provably mid-evaluation (it holds the
        #    checkpoint's lock and waits for the job's bless lock, held here).
        blocker = conn.lock(job_lock_name("outage"), timeout=600)
        assert blocker.acquire(blocking=False)
        writer.train(3)
        writer.save(4)
        wait_for(lambda: conn.exists(eval_lock_name("outage", 4)), 120, "step 4's evaluation to start")
        redis_box[-1].stop()
        wait_for(lambda: log_path.read_text(errors="replace").count("lost Redis") >= 2, 60,
                 "the worker to notice again")
        time.sleep(3)
        restart(redis_box)
        conn = connect(url, timeout_s=1.0)
        conn.delete(job_lock_name("outage"))  # the blocker's lock survived in the AOF
        wait_for(lambda: run.eval_result(4).exists(), 180, "the interrupted evaluation, redone")
        assert worker.poll() is None
    finally:
        stop(worker)
        print(f"--- worker log ---\n{log_path.read_text(errors='replace')[-8000:]}")

    assert records(run) == ["1.json", "2.json", "3.json", "4.json"]
    wait_for(lambda: eval_steps(conn, "outage") == [1, 2, 3, 4], 60, "every eval event")
    assert republish(layout, conn) == []  # nothing on disk is missing from Redis
    assert eval_steps(conn, "outage") == [1, 2, 3, 4]  # exactly one eval event per checkpoint
    # The job's hash agrees with the results on disk, whatever order they reached Redis in.
    on_disk = {s: json.loads(run.eval_result(s).read_text()) for s in (1, 2, 3, 4)}
    job = JobState(conn).get("outage")
    assert job["latest_eval"]["step"] == 4
    best = best_of(list(on_disk.values()))  # highest accuracy, lowest loss, earliest step
    assert job["best"] == {"step": best["step"], "accuracy": best["accuracy"], "loss": best["loss"]}
    exported = sorted(r["exported_version"] for r in on_disk.values() if r["blessed"])
    assert exported and job["exported_versions"] == exported
    exports = [d["version"] for _, kind, d in JobState(conn).events("outage") if kind == "export"]
    assert sorted(exports) == exported
    assert request_status(conn, eval_request_id("outage", 4)) is not None
