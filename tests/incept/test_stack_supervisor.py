"""The local process supervisor without the services: a real Redis with AOF
persistence under the data root, the state file, refusing a second stack,
cleaning up after a dead supervisor, re-queueing interrupted training jobs.
(The full stack with every service is tested in tests/e2e.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import psutil
import pytest
import redis

from incept.stack import (
    Stack,
    StackError,
    read_state,
    stop_orphans,
    stop_stack,
)


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            start_new_session=True)


def test_redis_persists_across_stack_restarts_and_state_file_lifecycle(tmp_path):
    root = tmp_path / "data"
    stack = Stack(root, port=0, services=()).start()
    try:
        state = read_state(root)
        assert state["status"] == "ready"
        assert state["url"] == stack.url and state["token"] == stack.token
        assert state["redis_url"] == stack.redis_url
        # The token file is private to the user.
        assert (stack.paths.token_file.stat().st_mode & 0o077) == 0
        redis.Redis.from_url(stack.redis_url).set("kept", "yes")
        token = stack.token
    finally:
        stack.stop()
    assert read_state(root) is None
    assert stack.redis.process.poll() is not None

    again = Stack(root, port=0, services=()).start()
    try:
        assert redis.Redis.from_url(again.redis_url).get("kept") == b"yes"
        assert again.token == token  # clients keep working across restarts
    finally:
        again.stop()


def test_configured_api_tokens_are_the_stacks_and_reach_every_child(tmp_path, monkeypatch):
    monkeypatch.setenv("INCEPT_API_TOKENS", " first, second ")
    stack = Stack(tmp_path / "data", port=0, services=()).start()
    try:
        assert stack.token == "first"
        assert read_state(stack.data_root)["token"] == "first"
        assert stack.make_child("gateway").env["INCEPT_API_TOKENS"] == "first,second"
        assert not stack.paths.token_file.exists()  # nothing generated
    finally:
        stack.stop()


def test_refuses_a_second_stack_on_the_same_data_root(tmp_path):
    root = tmp_path / "data"
    other = _sleeper()  # stands in for a live supervisor of another stack
    try:
        (root / "stack").mkdir(parents=True)
        (root / "stack" / "state.json").write_text(json.dumps({
            "status": "ready", "url": "http://127.0.0.1:9", "supervisor_pid": other.pid,
            "supervisor_create_time": psutil.Process(other.pid).create_time(), "children": {}}))
        with pytest.raises(StackError, match="already running"):
            Stack(root, port=0, services=()).start()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError, match=f"port {port}"):
            Stack(tmp_path / "data", port=port, services=()).start()


def test_down_after_a_dead_supervisor_stops_what_it_left_and_nothing_else(tmp_path):
    root = tmp_path / "data"
    left = _sleeper()
    unrelated = _sleeper()
    try:
        (root / "stack").mkdir(parents=True)
        (root / "stack" / "state.json").write_text(json.dumps({
            "status": "ready", "url": "http://127.0.0.1:9",
            "supervisor_pid": 999999999, "supervisor_create_time": 0,
            "children": {
                "evaluator": {"pid": left.pid, "create_time": psutil.Process(left.pid).create_time()},
                # A recycled pid: same number, another start time -> must not be touched.
                "gateway": {"pid": unrelated.pid, "create_time": 12345.0},
            }}))
        stop_stack(root, timeout_s=10)
        assert left.wait(10) is not None
        assert unrelated.poll() is None
        assert read_state(root) is None
        with pytest.raises(StackError, match="no stack is running"):
            stop_stack(root)
    finally:
        for p in (left, unrelated):
            p.kill()
            p.wait()


def test_stop_orphans_tolerates_gone_processes():
    stop_orphans({"children": {"trainer": {"pid": 999999999, "create_time": 1.0}}}, timeout_s=1)


def test_interrupted_training_jobs_are_queued_again(redis_conn):
    from rq.job import JobStatus

    from incept.jobstate import JobState
    from incept.queues import (
        TRAIN_QUEUE,
        enqueue_training,
        request_id,
        request_status,
        resume_interrupted_jobs,
        rq_queue,
        train_request_id,
    )

    jobs = JobState(redis_conn)
    for job_id, state in (("waiting", "queued"), ("lost", "running"), ("done", "succeeded"),
                          ("abandoned", "running"), ("preempted", "queued")):
        jobs.create(job_id)
        jobs.update(job_id, state=state)
    enqueue_training(redis_conn, "waiting")
    # What a preempted trainer queues for itself (another request id, same job).
    enqueue_training(redis_conn, "preempted", resume_step=7)
    # "abandoned": its request was taken by a worker that no longer exists.
    req = enqueue_training(redis_conn, "abandoned")
    rq_queue(redis_conn, TRAIN_QUEUE).remove(req)
    req.set_status(JobStatus.STARTED)
    req.worker_name = "gone-worker"
    req.save()

    resumed = resume_interrupted_jobs(redis_conn)

    assert sorted(resumed) == ["abandoned", "lost"]
    queued = rq_queue(redis_conn, TRAIN_QUEUE).job_ids
    assert sorted(queued) == sorted([request_id("train", "preempted", "resume", 7)]
                                    + [train_request_id(j) for j in ("waiting", "lost", "abandoned")])
    assert request_status(redis_conn, train_request_id("done")) is None
    # Nothing is queued twice when asked again.
    assert resume_interrupted_jobs(redis_conn) == []
    assert len(rq_queue(redis_conn, TRAIN_QUEUE).job_ids) == 4


def test_stop_gives_each_child_its_grace_period_then_kills(tmp_path, monkeypatch):
    """A child that ignores SIGTERM is killed after its timeout; one that obeys exits cleanly."""
    import incept.stack as stack_mod

    monkeypatch.setitem(stack_mod.STOP_TIMEOUT_S, "evaluator", 1.0)
    stack = Stack(tmp_path / "data", port=0, services=())
    stack.start()
    stubborn = stack_mod.Child("evaluator", [sys.executable, "-c",
                                             "import signal, time\n"
                                             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                             "print('ARMED'.lower(), flush=True)\n"
                                             "time.sleep(120)"],
                               {}, stack.paths.log_file("evaluator"))
    obedient = stack_mod.Child("gateway", [sys.executable, "-c", "import time; time.sleep(120)"],
                               {}, stack.paths.log_file("gateway"))
    stubborn.start()
    obedient.start()
    stack.children = {"evaluator": stubborn, "gateway": obedient}
    deadline = time.monotonic() + 30
    while "armed" not in stubborn.tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    stack.stop()
    assert obedient.process.returncode == -15  # SIGTERM
    assert stubborn.process.returncode == -9  # SIGKILL after its grace period
    assert stack.redis.process.poll() is not None
