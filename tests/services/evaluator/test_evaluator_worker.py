"""The evaluator as it runs: real `incept evaluator` worker processes (rq
SimpleWorker + reconciler) on a real Redis, the real trainer as a process,
real TensorFlow with the tiny net."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import tensorflow as tf
import yaml
from evaluator_helpers import (
    ROOT,
    RunWriter,
    make_dataset,
    start_evaluator,
    stop,
    validation_images,
    wait_for,
    worker_env,
)
from rq import Worker

from incept.export import read_manifest
from incept.jobstate import JobState
from incept.layout import best_of, list_versions
from incept.queues import (
    EVAL_QUEUE,
    enqueue_eval,
    eval_request_id,
    fetch_request,
    request_status,
    rq_queue,
)
from services.evaluator.locks import eval_lock_name, job_lock_name


@pytest.fixture
def dataset(layout, tmp_path):
    return make_dataset(layout, tmp_path)


@pytest.fixture
def workers(layout, redis_url, tmp_path):
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        proc = start_evaluator(layout, redis_url, tmp_path / f"{name}.log", name, *args)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop(proc)
    # Shown by pytest only when the test failed.
    for log in sorted(tmp_path.glob("*.log")):
        print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-6000:]}")


def results(run) -> list[str]:
    """The run's result and error records (not the per-image sidecars the gallery reads)."""
    if not run.eval_dir.is_dir():
        return []
    return sorted(p.name for p in run.eval_dir.glob("*.json") if not p.name.endswith(".images.json"))


def test_trainer_to_eval_queue_to_blessed_export(layout, redis_url, redis_conn, dataset,
                                                 workers, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "dataset": "flowers", "model_name": "tiny", "image_size": 32, "max_steps": 40,
        "batch_size": 8, "learning_rate": 0.01, "checkpoint_every_steps": 20,
        "checkpoint_every_seconds": None, "served_model_name": "petals"}))
    workers("ev1", "--no-reconciler")  # only the trainer's requests drive it
    env = worker_env(layout, redis_url)
    trainer = subprocess.run([sys.executable, "-m", "incept.cli", "train", str(spec),
                              "--job-id", "pipe", "--progress-interval", "1"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert trainer.returncode == 0, trainer.stderr[-3000:]
    run = layout.run("pipe")
    steps = sorted(int(p.name.split("-")[1].split(".")[0]) for p in run.checkpoints.glob("ckpt-*.index"))
    assert steps and steps[-1] == 40

    state = JobState(redis_conn)
    wait_for(lambda: (state.get("pipe") or {}).get("latest_eval", {}).get("step") == 40
             and run.eval_result(40).exists(), 180, "the evaluation of step 40")
    for step in steps:
        wait_for(lambda s=step: run.eval_result(s).exists(), 60, f"eval of step {step}")
    on_disk = {s: json.loads(run.eval_result(s).read_text()) for s in steps}
    job = state.get("pipe")
    best = best_of(list(on_disk.values()))  # highest accuracy, lowest loss, earliest step
    assert job["best"] == {"step": best["step"], "accuracy": best["accuracy"], "loss": best["loss"]}
    exported = sorted(r["exported_version"] for r in on_disk.values() if r["blessed"])
    assert exported and job["exported_versions"] == exported and job["served_model"] == "petals"
    events = [(k, d) for _, k, d in state.events("pipe") if k in ("eval", "export")]
    assert sorted(d["step"] for k, d in events if k == "eval") == steps

    # The newest export loads and predicts what its eval result says.
    version = exported[-1]
    manifest = read_manifest(layout.model("petals") / str(version))
    images, labels = validation_images(dataset)
    sig = tf.saved_model.load(str(layout.model("petals") / str(version))).signatures["serving_default"]
    out = sig(images=tf.constant(images))
    accuracy = float((out["classes"].numpy()[:, 0] == labels).mean())
    assert accuracy == pytest.approx(on_disk[manifest["step"]]["accuracy"])
    assert out["labels"].numpy().shape == (len(images), 3)


def test_bad_checkpoint_fails_request_worker_survives(layout, redis_conn, dataset, workers):
    writer = RunWriter(layout, "bad")
    writer.save(1)
    writer.train(5)
    writer.save(2)
    data = next(writer.run.checkpoints.glob("ckpt-1.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    worker = workers("ev1", "--no-reconciler")
    assert enqueue_eval(redis_conn, "bad", 1)
    assert enqueue_eval(redis_conn, "bad", 2)
    assert not enqueue_eval(redis_conn, "bad", 2)  # duplicate request: no-op
    wait_for(lambda: writer.run.eval_result(2).exists(), 120, "eval of the good checkpoint")
    error = json.loads((writer.run.eval_dir / "1.error.json").read_text())
    assert "ckpt-1" in error["error"]
    # The result file is written first, then published to Redis (evaluate.publish).
    state = wait_for(lambda: (s := JobState(redis_conn).get("bad")) and "latest_eval" in s and s,
                     60, "the result published")
    assert state["eval_error"]["step"] == 1 and "ckpt-1" in state["eval_error"]["error"]
    assert state["latest_eval"]["step"] == 2
    assert worker.poll() is None  # still serving
    assert results(writer.run) == ["1.error.json", "2.json"]


def test_sigkill_mid_eval_then_restart_gives_one_result(layout, redis_conn, dataset, workers):
    writer = RunWriter(layout, "killme")
    writer.save(5)
    # Hold the job's bless lock: the worker computes metrics, then waits on it
    # while holding the checkpoint's lock -- provably in the middle of the work.
    blocker = redis_conn.lock(job_lock_name("killme"), timeout=600)
    assert blocker.acquire(blocking=False)
    first = workers("ev1")
    wait_for(lambda: redis_conn.exists(eval_lock_name("killme", 5)), 120, "the evaluation to start")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    blocker.release()
    assert results(writer.run) == []
    assert list_versions(layout.model("flowers")) == []

    workers("ev2")  # the reconciler finds the abandoned request and asks again
    wait_for(lambda: writer.run.eval_result(5).exists(), 120, "the redone evaluation")
    assert results(writer.run) == ["5.json"]
    assert list_versions(layout.model("flowers")) == [1]
    evals = [d for _, k, d in JobState(redis_conn).events("killme") if k == "eval"]
    assert [d["step"] for d in evals] == [5]
    wait_for(lambda: str(request_status(redis_conn, eval_request_id("killme", 5))) in
             ("JobStatus.FINISHED", "finished"), 30, "the request to finish")


def test_reconciler_finds_checkpoints_never_requested(layout, redis_conn, dataset, workers):
    writer = RunWriter(layout, "quiet")
    for step in (1, 2, 3):
        writer.train(3)
        writer.save(step)
    workers("ev1")
    for step in (1, 2, 3):
        wait_for(lambda s=step: writer.run.eval_result(s).exists(), 120, f"eval of step {step}")
    # A checkpoint written while the worker runs is found by a later pass.
    writer.train(3)
    writer.save(4)
    wait_for(lambda: writer.run.eval_result(4).exists(), 60, "eval of step 4")
    assert results(writer.run) == ["1.json", "2.json", "3.json", "4.json"]
    accuracies = [json.loads(writer.run.eval_result(s).read_text())["accuracy"] for s in (1, 2, 3, 4)]
    blessed = [json.loads(writer.run.eval_result(s).read_text())["blessed"] for s in (1, 2, 3, 4)]
    # Blessed exactly when beating the best so far (evaluation order = step order here).
    assert blessed == [a > max(accuracies[:i], default=-1) for i, a in enumerate(accuracies)]


def test_two_workers_never_export_the_same_version(layout, redis_conn, dataset, workers):
    jobs = ["ja", "jb", "jc", "jd"]
    runs = {}
    for i, job in enumerate(jobs):
        writer = RunWriter(layout, job, served_model_name="shared", seed=i)
        writer.save(1)
        runs[job] = writer.run
    workers("ev1", "--no-reconciler")
    workers("ev2", "--no-reconciler")
    wait_for(lambda: len(Worker.all(queue=rq_queue(redis_conn, EVAL_QUEUE))) == 2, 120,
             "both workers to listen")
    # Hold every job's bless lock so each worker stops mid-evaluation on one job;
    # releasing them together makes both workers export into "shared" at once.
    blockers = [redis_conn.lock(job_lock_name(job), timeout=600) for job in jobs]
    assert all(b.acquire(blocking=False) for b in blockers)
    for job in jobs:
        assert enqueue_eval(redis_conn, job, 1)
    busy = wait_for(lambda: [j for j in jobs if redis_conn.exists(eval_lock_name(j, 1))]
                    if sum(bool(redis_conn.exists(eval_lock_name(j, 1))) for j in jobs) == 2
                    else None, 120, "both workers to be mid-evaluation")
    for b in blockers:
        b.release()
    for job in jobs:
        wait_for(lambda j=job: runs[j].eval_result(1).exists(), 180, f"eval of {job}")
    by_worker = {j: fetch_request(redis_conn, eval_request_id(j, 1)).worker_name
                 for j in busy}
    assert sorted(by_worker.values()) == ["ev1", "ev2"]
    versions = list_versions(layout.model("shared"))
    manifests = [read_manifest(layout.model("shared") / str(v)) for v in versions]
    # Exports into one model are serialised: versions are numbered without gaps, and a
    # served model only gets better (each version beats the one served before it).
    assert versions == list(range(1, len(versions) + 1))
    accuracies = [m["metrics"]["accuracy"] for m in manifests]
    assert accuracies == sorted(set(accuracies)), accuracies
    exported = []
    for job in jobs:
        result = json.loads(runs[job].eval_result(1).read_text())
        if result["blessed"]:
            manifest = read_manifest(layout.model("shared") / str(result["exported_version"]))
            assert (manifest["job_id"], manifest["step"]) == (job, 1)
            assert manifest["export_reason"] == result["bless_reason"]
            exported.append(result["exported_version"])
        else:
            assert "does not beat served version" in result["bless_reason"], result["bless_reason"]
    assert sorted(exported) == versions
