"""The trainer as processes: `incept train` preempted by SIGTERM and resumed,
Redis stopped and restarted mid-run, and a real rq worker on the `train` queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "incept" / "training"))
from helpers_training import make_dataset, make_run  # noqa: E402

REPO = Path(__file__).parents[3]
INCEPT = [sys.executable, "-m", "incept.cli"]


def _env(layout, redis_url):
    env = dict(os.environ, INCEPT_DATA_ROOT=str(layout.root), INCEPT_REDIS_URL=redis_url,
               PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    return env


def _wait(predicate, timeout_s, proc=None, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read().decode()[-3000:] if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _read_step(prefix: Path) -> int:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.fixture
def data(layout):
    make_dataset(layout)
    return layout


def test_sigterm_checkpoints_and_restart_resumes(data, redis_url, redis_conn):
    from incept.checkpoints import checkpoint_prefix, list_checkpoints
    from incept.jobstate import JobState

    run, _ = make_run(data, "preempt", max_steps=1_000_000, checkpoint_every_steps=50)
    proc = subprocess.Popen([*INCEPT, "train", "--job-id", "preempt", "--progress-interval", "0.5"],
                            env=_env(data, redis_url), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        _wait(lambda: list_checkpoints(run), 120, proc, "a first checkpoint")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = list_checkpoints(run)[-1]
    assert _read_step(checkpoint_prefix(run, saved)) == saved
    assert json.loads(run.status.read_text())["preempted_at"] == saved
    assert JobState(redis_conn).get("preempt")["state"] == "queued"

    make_run(data, "preempt", max_steps=saved + 7, checkpoint_every_steps=50)
    done = subprocess.run([*INCEPT, "train", "--job-id", "preempt"], env=_env(data, redis_url),
                          cwd=REPO, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    status = json.loads(run.status.read_text())
    assert status["resumed_from"] == saved and status["state"] == "succeeded"
    assert list_checkpoints(run)[-1] == saved + 7
    assert _read_step(checkpoint_prefix(run, saved + 7)) == saved + 7


def test_redis_outage_loses_no_eval_request(data, tmp_path):

    from incept.checkpoints import list_checkpoints
    from incept.queues import connect, eval_request_id, rq_queue
    from incept.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", persistent=True).start()
    run, _ = make_run(data, "outage", max_steps=1_000_000, checkpoint_every_steps=40,
                      keep_checkpoints=1000)
    proc = subprocess.Popen([*INCEPT, "train", "--job-id", "outage", "--progress-interval", "0.5"],
                            env=_env(data, server.url), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        conn = connect(server.url)
        eval_queue = rq_queue(conn, "eval")
        _wait(lambda: eval_queue.count >= 1, 120, proc, "a first eval request")
        conn.close()
        server.stop()
        during = len(list_checkpoints(run))
        _wait(lambda: len(list_checkpoints(run)) >= during + 3, 120, proc,
              "checkpoints during the outage")
        server.start()
        after = len(list_checkpoints(run))
        _wait(lambda: len(list_checkpoints(run)) >= after + 1, 120, proc, "a checkpoint after")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    conn = connect(server.url)
    try:
        steps = list_checkpoints(run)
        assert len(steps) >= 5
        ids = set(rq_queue(conn, "eval").job_ids)
        assert ids == {eval_request_id("outage", s) for s in steps}
    finally:
        conn.close()
        server.stop()


def test_rq_worker_runs_a_conversion_and_a_training_job(data, redis_url, redis_conn):

    from incept.checkpoints import list_checkpoints
    from incept.data.dataset import DatasetInfo
    from incept.data.synthetic import write_class_folders
    from incept.jobstate import JobState
    from incept.queues import enqueue_conversion, enqueue_training, fetch_request

    write_class_folders(data.uploads / "more", num_classes=2, per_class=6, size=(40, 40))
    conversion = enqueue_conversion(redis_conn, "more", "uploads/more")
    run, _ = make_run(data, "queued", max_steps=30, checkpoint_every_steps=None)
    JobState(redis_conn).create("queued")
    job = enqueue_training(redis_conn, "queued")
    done = subprocess.run([*INCEPT, "trainer", "--burst"], env=_env(data, redis_url), cwd=REPO,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    job = fetch_request(redis_conn, job.id)
    assert job.get_status() == "finished", job.latest_result()
    assert job.return_value()["state"] == "succeeded"
    assert list_checkpoints(run) == [30]
    # The final state is the job's last word: the training, its teardown and
    # TensorBoard are done before it goes out, and the rq job returns right after.
    lines = done.stderr.decode().splitlines()
    final = max(i for i, line in enumerate(lines)
                if '"event": "state"' in line and '"state": "succeeded"' in line)
    finished = next(i for i, line in enumerate(lines) if "Successfully completed train" in line)
    assert any('"event": "done"' in line for line in lines[:final])
    assert final < finished
    assert not [line for line in lines[final + 1:finished] if "incept" in line], lines[final:finished]
    assert JobState(redis_conn).get("queued")["state"] == "succeeded"
    conversion = fetch_request(redis_conn, conversion.id)
    assert conversion.get_status() == "finished"
    assert conversion.return_value()["written"] == 12
    assert DatasetInfo.load(data.dataset("more")).num_classes == 2


def test_converter_worker_converts_uploads_and_leaves_training_alone(data, redis_url, redis_conn):
    """`incept converter` (the Kubernetes converter Deployment) consumes `datasets` only:
    training there runs as Jobs, so a `train` request stays where it is."""
    from rq.job import Job

    from incept.data.dataset import DatasetInfo
    from incept.data.synthetic import write_class_folders
    from incept.queues import enqueue_conversion, enqueue_training

    write_class_folders(data.uploads / "more", num_classes=2, per_class=6, size=(40, 40))
    conversion = enqueue_conversion(redis_conn, "more", "uploads/more")
    training = enqueue_training(redis_conn, "untouched")
    done = subprocess.run([*INCEPT, "converter", "--burst"], env=_env(data, redis_url), cwd=REPO,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert Job.fetch(conversion.id, connection=redis_conn).get_status() == "finished"
    assert DatasetInfo.load(data.dataset("more")).num_classes == 2
    assert Job.fetch(training.id, connection=redis_conn).get_status() == "queued"


def test_incept_train_refuses_an_invalid_spec(data, redis_url, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: shapes\nmodel_name: nope\nlearning_rate: -1\n")
    done = subprocess.run([*INCEPT, "train", str(bad)], env=_env(data, redis_url), cwd=REPO,
                          capture_output=True, timeout=120)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "model_name" in err and "learning_rate" in err and "Traceback" not in err
    assert not any(data.runs.iterdir())


def test_stopping_the_worker_checkpoints_and_queues_a_resume(data, redis_url, redis_conn):
    """SIGTERM to `incept trainer` reaches the training job: it checkpoints and
    queues a resume request that the next worker picks up."""

    from incept.checkpoints import list_checkpoints
    from incept.queues import enqueue_training, request_id, rq_queue

    run, _ = make_run(data, "stopme", max_steps=1_000_000, checkpoint_every_steps=50)
    enqueue_training(redis_conn, "stopme")
    proc = subprocess.Popen([*INCEPT, "trainer"], env=_env(data, redis_url), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(lambda: list_checkpoints(run), 120, proc, "a first checkpoint")
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = list_checkpoints(run)[-1]
    assert json.loads(run.status.read_text())["preempted_at"] == saved
    assert rq_queue(redis_conn, "train").job_ids == [
        request_id("train", "stopme", "resume", saved)]


def test_incept_train_runs_the_tiny_example_without_redis(data):
    from incept.checkpoints import list_checkpoints, restore_for_inference

    done = subprocess.run([*INCEPT, "train", str(REPO / "examples" / "tiny-synthetic.yaml"),
                           "--job-id", "example", "--redis-url", "none"],
                          env=_env(data, "redis://127.0.0.1:1/0"), cwd=REPO, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    run = data.run("example")
    assert json.loads(run.spec.read_text())["model_name"] == "tiny"
    assert list_checkpoints(run) == [100, 200, 300]
    assert restore_for_inference(run, layout=data).ema_applied
    assert "succeeded at step 300/300" in done.stdout.decode()
