"""Two trainer processes on 127.0.0.1 under MultiWorkerMirroredStrategy
(TF_CONFIG): both end with identical trained weights; only the chief writes
checkpoints, TensorBoard events, status and Redis events."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "incept" / "training"))
from helpers_training import TINY_HEADS, make_dataset, make_run  # noqa: E402

REPO = Path(__file__).parents[3]


def test_two_workers_agree_and_only_the_chief_writes(layout, redis_url, redis_conn):
    from incept.checkpoints import list_checkpoints
    from incept.jobstate import JobState

    make_dataset(layout)
    run, _ = make_run(layout, "multi", max_steps=6, batch_size=8, checkpoint_every_steps=3)
    outputs = []
    for returncode, err in _finish(_start_workers(layout, redis_url, "multi")):
        assert returncode == 0, err[-4000:]
        outputs.append(err)
    digests = []
    for text in outputs:
        done = _done(text)
        assert done["step"] == 6
        digests.append((done["worker"], done["weights_sha256"]))
    assert sorted(w for w, _ in digests) == [0, 1]
    assert digests[0][1] == digests[1][1]

    assert list_checkpoints(run) == [3, 6]
    assert len(list(run.train_logs.glob("events.out.tfevents.*"))) == 1
    assert json.loads(run.status.read_text())["state"] == "succeeded"
    kinds = [k for _, k, _ in JobState(redis_conn).events("multi")]
    assert kinds.count("checkpoint") == 2
    # Only the chief logs progress and checkpoints.
    chief = outputs[[w for w, _ in digests].index(0)]
    other = outputs[[w for w, _ in digests].index(1)]
    assert '"event": "checkpoint"' in chief and '"event": "checkpoint"' not in other


def test_two_workers_split_the_head_only_feature_pass(layout, redis_url, tmp_path):
    """Each worker computes its shard of the features into the cache, the chief
    trains the heads on the union: the cache and the heads equal a one-worker run's."""
    import numpy as np

    from incept.checkpoints import list_checkpoints, restore_for_inference
    from incept.layout import Layout
    from incept.training.trainer import train

    spec = dict(trainable_scopes=TINY_HEADS, augment=False, max_steps=12, batch_size=8,
                checkpoint_every_steps=6, learning_rate=0.05)
    make_dataset(layout)
    run, _ = make_run(layout, "hmulti", **spec)
    outputs = [err for code, err in _finish(_start_workers(layout, redis_url, "hmulti"))
               if code == 0 or pytest.fail(err[-4000:])]
    done = sorted((_done(text) for text in outputs), key=lambda d: d["worker"])
    assert [d["worker"] for d in done] == [0, 1]
    assert done[0]["step"] == 12 and done[1] == {**done[1], "step": 0, "features_only": True}
    assert list_checkpoints(run) == [6, 12]
    # Each worker computed half of each split (shard parts, joined by the chief).
    assert all("computed" in text and ".part" not in "".join(
        str(p) for p in layout.feature_cache.rglob("*")) for text in outputs)

    single = Layout(tmp_path / "single").ensure()
    make_dataset(single)
    single_run, _ = make_run(single, "hone", **spec)
    train("hone", single)
    cached = {p.relative_to(layout.feature_cache): np.load(p) for p in layout.feature_cache.rglob("*.npy")}
    alone = {p.relative_to(single.feature_cache): np.load(p) for p in single.feature_cache.rglob("*.npy")}
    assert cached.keys() == alone.keys() and len(cached) == 4  # 2 splits x (pre_logits, aux)
    for name, value in alone.items():
        np.testing.assert_allclose(cached[name].astype(np.float32), value.astype(np.float32),
                                   rtol=2e-3, atol=2e-3)
    two = restore_for_inference(run, layout=layout).model
    one = restore_for_inference(single_run, layout=single).model
    for layer in ("Logits.Logits", "AuxLogits.Aux_logits"):
        for a, b in zip(two.get_layer(layer).weights, one.get_layer(layer).weights, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)


def _start_workers(layout, redis_url, job_id):
    from incept.redis_server import free_port

    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, INCEPT_DATA_ROOT=str(layout.root), INCEPT_REDIS_URL=redis_url,
                   PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2",
                   # TF asks the GCE metadata server which platform this is: keep that on loopback.
                   GCE_METADATA_IP="127.0.0.1:1",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, "-m", "incept.cli", "train", "--job-id", job_id,
                                       "--progress-interval", "0.2"],
                                      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def _finish(procs, timeout_s=400):
    outputs = []
    try:
        for proc in procs:
            _out, err = proc.communicate(timeout=timeout_s)
            outputs.append((proc.returncode, err.decode()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return outputs


def _done(text):
    done = [json.loads(m) for m in re.findall(r'(\{"event": "done".*\})', text)]
    assert len(done) == 1, text[-4000:]
    return done[0]


def test_sigterm_to_a_non_chief_worker_stops_the_cluster_at_one_checkpoint(layout, redis_url):
    """PreemptionCheckpointHandler: SIGTERM to worker 1 makes both workers save
    one checkpoint at the same step and exit as preempted; both restarted, they
    resume from it and finish."""
    import time

    from incept.checkpoints import list_checkpoints

    make_dataset(layout)
    run, _ = make_run(layout, "mpreempt", max_steps=1_000_000, batch_size=8,
                      checkpoint_every_steps=None, keep_checkpoints=10)
    procs = _start_workers(layout, redis_url, "mpreempt")
    try:
        deadline = time.monotonic() + 300
        while not (run.status.exists() and json.loads(run.status.read_text()).get("step", 0) > 0):
            assert all(p.poll() is None for p in procs), _finish(procs)
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)
    finally:
        outputs = _finish(procs, timeout_s=120)
    assert [code for code, _ in outputs] == [143, 143], [err[-3000:] for _, err in outputs]
    done = [_done(err) for _, err in outputs]
    assert [d["state"] for d in done] == ["preempted", "preempted"]
    saved = done[0]["step"]
    assert done[1]["step"] == saved and saved > 0
    assert done[0]["weights_sha256"] == done[1]["weights_sha256"]
    assert list_checkpoints(run) == [saved]
    status = json.loads(run.status.read_text())
    assert status["preempted_at"] == saved and status["state"] == "queued"

    make_run(layout, "mpreempt", max_steps=saved + 4, batch_size=8, checkpoint_every_steps=None,
             keep_checkpoints=10)
    outputs = _finish(_start_workers(layout, redis_url, "mpreempt"))
    assert [code for code, _ in outputs] == [0, 0], [err[-3000:] for _, err in outputs]
    done = [_done(err) for _, err in outputs]
    assert [d["step"] for d in done] == [saved + 4, saved + 4]
    assert done[0]["weights_sha256"] == done[1]["weights_sha256"]
    assert list_checkpoints(run) == [saved, saved + 4]
    status = json.loads(run.status.read_text())
    assert status["resumed_from"] == saved and status["state"] == "succeeded"
