"""Whoever can write to Redis cannot make a worker run code: rq requests cross
Redis as JSON. A pickled request whose unpickling would run code is put on the
trainer's queue; a real `incept trainer` worker fails that request without
unpickling it and keeps working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rq import Queue

from incept.queues import CONVERT_FUNC, DATASETS_QUEUE, fetch_request


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_pickled_request_is_never_unpickled_by_a_worker(redis_conn, redis_url, layout, tmp_path):
    marker = tmp_path / "pwned"
    # rq's default serializer is pickle: what an attacker with Redis access would send.
    hostile = Queue(DATASETS_QUEUE, connection=redis_conn).enqueue(
        CONVERT_FUNC, _RunsCodeWhenUnpickled(marker), "src", job_id="hostile")
    env = {**os.environ, "INCEPT_DATA_ROOT": str(layout.root), "INCEPT_REDIS_URL": redis_url}
    done = subprocess.run([sys.executable, "-m", "incept.cli", "trainer", "--burst"], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists(), "the worker unpickled the request"
    assert fetch_request(redis_conn, hostile.id).get_status() == "failed"
