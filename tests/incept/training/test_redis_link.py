"""RedisLink: nothing blocks or is lost while Redis is down (real redis-server)."""

from __future__ import annotations

import time


def _wait(predicate, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_requests_made_while_redis_is_down_are_sent_after_it_returns(tmp_path):
    from incept.jobstate import JobState
    from incept.queues import connect, eval_request_id, rq_queue
    from incept.redis_server import RedisServer
    from incept.training.redis_link import RedisLink

    server = RedisServer(tmp_path / "redis", persistent=True).start()
    link = RedisLink(server.url, "job", poll_s=0.05, timeout_s=0.5)
    try:
        link.request_eval(1)
        _wait(lambda: link.sent_evals == [1])
        server.stop()
        for step in (2, 3):  # the producer side never touches Redis
            link.request_eval(step)
            link.update(step=step)
            link.emit("checkpoint", {"step": step})
        time.sleep(1.0)  # a few failed attempts
        assert link.pending_evals == [2, 3]
        server.start()
        _wait(lambda: link.sent_evals == [1, 2, 3], timeout_s=60)
        assert link.close(timeout_s=10) == []
        conn = connect(server.url)
        assert sorted(rq_queue(conn, "eval").job_ids) == sorted(
            eval_request_id("job", s) for s in (1, 2, 3))
        state = JobState(conn)
        assert state.get("job")["step"] == 3
        assert [d["step"] for _, k, d in state.events("job") if k == "checkpoint"] == [2, 3]
        conn.close()
    finally:
        link.close(timeout_s=1)
        server.stop()


def test_close_gives_up_and_reports_unsent_requests(tmp_path):
    from incept.redis_server import RedisServer, free_port
    from incept.training.redis_link import RedisLink

    url = RedisServer(tmp_path, port=free_port()).url  # nothing listens there
    link = RedisLink(url, "job", poll_s=0.05, timeout_s=0.2)
    link.request_eval(5)
    assert link.close(timeout_s=1.0) == [5]
    assert not link._thread.is_alive()


def test_close_returns_once_everything_is_delivered_not_at_its_deadline(redis_url, redis_conn):
    """The last words of a job (final state, its event, an eval request) are
    delivered by close(), which then returns: its deadline is only for an
    unreachable Redis. (The thread's bound is an upper limit, not a timing check.)"""
    import threading

    from incept.jobstate import JobState
    from incept.queues import eval_request_id, rq_queue
    from incept.training.redis_link import RedisLink

    link = RedisLink(redis_url, "job", poll_s=3600.0)  # no periodic wake-up to lean on
    link.update(state="succeeded", step=7)
    link.emit("state", {"state": "succeeded", "step": 7})
    link.request_eval(7)
    unsent = []
    closer = threading.Thread(target=lambda: unsent.append(link.close(timeout_s=3600.0)))
    closer.start()
    closer.join(120)
    assert not closer.is_alive(), "close() waited for its deadline with nothing left to send"
    assert unsent == [[]] and not link._thread.is_alive()
    state = JobState(redis_conn)
    assert state.get("job")["state"] == "succeeded"
    assert state.events("job")[-1][1:] == ("state", {"state": "succeeded", "step": 7})
    assert rq_queue(redis_conn, "eval").job_ids == [eval_request_id("job", 7)]
