"""Two trainer processes on 127.0.0.1 under MultiWorkerMirroredStrategy
(TF_CONFIG): both end with identical trained weights; only the chief writes
checkpoints, TensorBoard events, status and Redis events."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "incept" / "training"))
from helpers_training import make_dataset, make_run  # noqa: E402

REPO = Path(__file__).parents[3]


def test_two_workers_agree_and_only_the_chief_writes(layout, redis_url, redis_conn):
    from incept.checkpoints import list_checkpoints
    from incept.jobstate import JobState
    from incept.redis_server import free_port

    make_dataset(layout)
    run, _ = make_run(layout, "multi", max_steps=6, batch_size=8, checkpoint_every_steps=3)
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, INCEPT_DATA_ROOT=str(layout.root), INCEPT_REDIS_URL=redis_url,
                   PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, "-m", "incept.cli", "train", "--job-id", "multi"],
                                      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=400)
            assert proc.returncode == 0, err.decode()[-4000:]
            outputs.append(err.decode())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    digests = []
    for text in outputs:
        done = [json.loads(m) for m in re.findall(r'(\{"event": "done".*\})', text)]
        assert len(done) == 1 and done[0]["step"] == 6
        digests.append((done[0]["worker"], done[0]["weights_sha256"]))
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
