"""The job routes (submit, list, inspect, events, cancel) and the API's token
auth through the served gateway (real Redis, real rq)."""

from __future__ import annotations

import json
import time

import pytest

from incept.fsutil import write_json_atomic
from incept.jobstate import JobState
from incept.layout import NAME_RE
from incept.queues import (
    connect,
    fetch_request,
    rq_queue,
    train_request_id,
)
from tests.services.gateway.conftest import SPEC, TOKEN, finished_job, save_checkpoint

PROTECTED = [
    ("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/some-job"),
    ("GET", "/v1/jobs/some-job/events"), ("DELETE", "/v1/jobs/some-job"),
    ("POST", "/v1/datasets?name=x"), ("GET", "/v1/datasets"), ("GET", "/v1/datasets/x"),
]


@pytest.fixture
def dataset(layout):
    d = layout.dataset("flowers")
    d.mkdir(parents=True)
    write_json_atomic(d / "dataset.json", {"class_names": ["a", "b"], "counts": {"train": 4}})
    return d


def test_every_protected_route_needs_a_valid_token(client):
    for method, path in PROTECTED:
        r = client.request(method, path)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        r = client.request(method, path, headers={"Authorization": "Bearer not-the-token"})
        assert r.status_code == 401, (method, path)
        r = client.request(method, path, headers={"Authorization": f"Basic {TOKEN}"})
        assert r.status_code == 401, (method, path)
        r = client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code != 401, (method, path)


def test_tokens_from_a_mounted_file(make_gateway, tmp_path):
    import httpx

    secret = tmp_path / "tokens"
    secret.write_text("file-token-1\n\nfile-token-2\n")
    gw = make_gateway(api_tokens_file=secret)
    with httpx.Client(base_url=gw.url) as c:
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer file-token-2"}).status_code == 200
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer file-token-3"}).status_code == 401


def test_submit_stores_the_spec_then_queues_training(client, auth, layout, dataset, redis_url):
    r = client.post("/v1/jobs", json=SPEC, headers=auth)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert NAME_RE.match(job_id) and job_id.startswith("flowers-")
    assert r.json()["url"].endswith(f"/v1/jobs/{job_id}")
    spec = json.loads(layout.run(job_id).spec.read_text())
    assert spec["dataset"] == "flowers" and spec["max_steps"] == 5
    conn = connect(redis_url)
    assert train_request_id(job_id) in rq_queue(conn, "train").job_ids
    assert fetch_request(conn, train_request_id(job_id)).args == [job_id]  # JSON, not a pickle
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert job["state"] == "queued" and job["spec"]["model_name"] == "tiny"
    assert job["model_name"] == "flowers"
    second = client.post("/v1/jobs", json=SPEC, headers=auth).json()["job_id"]
    assert second != job_id
    listed = [j["job_id"] for j in client.get("/v1/jobs", headers=auth).json()["jobs"]]
    assert set(listed) == {job_id, second}


def test_submit_bad_specs(client, auth, layout, dataset, tmp_path):
    cases = [
        ({"dataset": "flowers", "model_name": "tiny"}, 422, "exactly one of max_steps or epochs"),
        ({**SPEC, "learning_rate": -1, "bogus": 1}, 422, "bogus"),
        ({**SPEC, "model_name": "resnet_9000"}, 422, "unknown model"),
        ({**SPEC, "dataset": "nosuch"}, 400, "not a known dataset"),
        ({**SPEC, "dataset": "../../etc"}, 400, "outside the data root"),
        ({**SPEC, "dataset": "/etc"}, 400, "outside the data root"),
        ([1, 2], 422, "invalid request"),
    ]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (layout.datasets / "escape").symlink_to(outside)
    cases.append(({**SPEC, "dataset": "datasets/escape"}, 400, "outside the data root"))
    cases.append(({**SPEC, "dataset": "escape"}, 400, "outside the data root"))
    for body, status, text in cases:
        r = client.post("/v1/jobs", json=body, headers=auth)
        assert r.status_code == status, (body, r.text)
        assert text in r.text, r.text
    r = client.post("/v1/jobs", content=b"{oops", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422 and "problems" in r.json()
    r = client.post("/v1/jobs", json={"dataset": "flowers"}, headers=auth)
    assert len(r.json()["problems"]) >= 1

    def chunked_spec():  # no Content-Length; still bounded by INCEPT_MAX_BODY_BYTES
        yield b'{"dataset": "flowers", "pad": "'
        for _ in range(25):
            yield b"x" * 1024 * 1024
        yield b'"}'

    r = client.post("/v1/jobs", content=chunked_spec(), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.text
    assert list(layout.runs.iterdir()) == []  # nothing half-created


def test_job_history_survives_redis_loss(client, auth, layout, redis_url):
    job_id = finished_job(layout)
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert job["state"] == "succeeded" and job["step"] == 5
    assert [e["step"] for e in job["evaluations"]] == [2, 4, 5]
    assert job["best"] == {"step": 4, "accuracy": 0.9}
    assert job["best_eval"]["confusion_matrix"] == [[5, 0], [1, 4]]
    assert job["exported_versions"] == [1]
    assert [j["job_id"] for j in client.get("/v1/jobs", headers=auth).json()["jobs"]] == [job_id]
    # Live Redis fields win over the volume's mirror.
    JobState(connect(redis_url)).update(job_id, loss=0.25)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["loss"] == 0.25


def test_events_stream_then_end(client, auth, layout, dataset, redis_url):
    job_id = client.post("/v1/jobs", json=SPEC, headers=auth).json()["job_id"]
    state = JobState(connect(redis_url))
    state.set_state(job_id, "running")
    state.emit(job_id, "progress", {"step": 3, "loss": 0.7, "lr": 0.01, "images_per_sec": 9.0, "eta_s": 1})
    state.set_state(job_id, "succeeded")
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    kinds = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    # No checkpoint to wait for: the stream ends right after the terminal state.
    assert kinds == ["state", "state", "progress", "state", "end"]
    assert json.loads([ln for ln in text.splitlines() if ln.startswith("data: ")][-1][6:]) == {
        "state": "succeeded", "evaluated": [], "failed": []}
    assert '"step": 3' in text
    last_id = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("id: ")][1]
    with client.stream("GET", f"/v1/jobs/{job_id}/events",
                       headers={**auth, "Last-Event-ID": last_id}) as r:
        resumed = "".join(r.iter_text())
    assert [ln for ln in resumed.splitlines() if ln.startswith("event: ")] == [
        "event: progress", "event: state", "event: end"]


class _SSE:
    """Raw server-sent event lines, read one block (event or comment) at a time."""

    def __init__(self, response):
        self.lines = response.iter_lines()

    def next_block(self) -> dict:
        block: dict = {}
        for line in self.lines:
            if not line:
                if block:
                    return block
                continue
            name, _, value = line.partition(": ")
            block[name] = value
        return block  # the stream closed

    def next_event(self) -> dict:
        while "event" not in (block := self.next_block()):
            assert block, "the stream closed"
        return {**block, "data": json.loads(block["data"])}


def _eval_result(job_id: str, step: int, exported_version=None) -> dict:
    return {"job_id": job_id, "step": step, "accuracy": 0.5 + step / 100, "recall_at_5": 1.0,
            "loss": 0.4, "num_images": 10, "class_names": ["a", "b"], "blessed": bool(exported_version),
            "exported_version": exported_version}


def test_events_continue_after_training_until_every_checkpoint_is_evaluated(
        client, auth, layout, dataset, redis_url):

    job_id = client.post("/v1/jobs", json=SPEC, headers=auth).json()["job_id"]
    run = layout.run(job_id)
    state = JobState(connect(redis_url))
    state.set_state(job_id, "running")
    for step in (2, 4, 6, 8):
        save_checkpoint(layout, job_id, step)
        state.emit(job_id, "checkpoint", {"step": step})
    # Step 2 was evaluated during training; step 4's evaluation failed during training
    # (the reconciler gave up: its record and its error event): neither holds the stream.
    write_json_atomic(run.eval_result(2), _eval_result(job_id, 2))
    state.emit(job_id, "eval", {"step": 2, "accuracy": 0.52})
    write_json_atomic(run.eval_error(4), {"job_id": job_id, "step": 4, "error": "gave up",
                                          "failed_at": time.time() - 3600})
    state.emit(job_id, "error", {"source": "evaluator", "step": 4, "error": "gave up"})
    state.set_state(job_id, "succeeded")

    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth) as r:
        sse = _SSE(r)
        kinds = []
        while (event := sse.next_event())["event"] != "waiting":
            kinds.append(event["event"])
        assert kinds == ["state", "state"] + ["checkpoint"] * 4 + ["eval", "error", "state"]
        assert event["data"] == {"state": "succeeded", "pending_evaluations": [6, 8]}
        # The evaluator finishes step 6: result on the volume first, then its events.
        write_json_atomic(run.eval_result(6), _eval_result(job_id, 6, exported_version=3))
        state.emit(job_id, "eval", {"step": 6, "accuracy": 0.56})
        assert sse.next_event()["event"] == "eval"
        # Its export event has not come yet: the stream looked again and waits (no end).
        assert sse.next_block() == {"": "keep-alive"}
        state.emit(job_id, "export", {"step": 6, "version": 3, "model": "flowers"})
        assert sse.next_event()["event"] == "export"
        assert sse.next_event()["data"] == {"state": "succeeded", "pending_evaluations": [8]}
        # Step 8 fails: an error record, then the error event; then the stream ends.
        write_json_atomic(run.eval_error(8), {"job_id": job_id, "step": 8, "error": "corrupt",
                                              "failed_at": time.time()})
        state.emit(job_id, "error", {"source": "evaluator", "step": 8, "error": "corrupt"})
        error = sse.next_event()
        assert error["event"] == "error"
        event = sse.next_event()
        assert event["event"] == "end"
        assert event["data"] == {"state": "succeeded", "evaluated": [2, 6], "failed": [4, 8]}
        assert sse.next_block() == {}  # closed
    # A client reconnecting after the last event (Last-Event-ID) gets the end at once.
    with client.stream("GET", f"/v1/jobs/{job_id}/events",
                       headers={**auth, "Last-Event-ID": error["id"]}) as r:
        sse = _SSE(r)
        assert sse.next_event()["event"] == "end"
        assert sse.next_block() == {}



def test_cancel(client, auth, layout, dataset, redis_url):
    job_id = client.post("/v1/jobs", json=SPEC, headers=auth).json()["job_id"]
    r = client.delete(f"/v1/jobs/{job_id}", headers=auth)
    assert r.status_code == 202 and r.json()["state"] == "cancelled"  # it never started
    conn = connect(redis_url)
    assert fetch_request(conn, train_request_id(job_id)).get_status().value == "canceled"
    assert JobState(conn).cancel_requested(job_id)
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 409
    assert client.delete("/v1/jobs/nosuch-job", headers=auth).status_code == 404
    # A running job is asked to stop (the trainer checkpoints, then says cancelled).
    running = client.post("/v1/jobs", json=SPEC, headers=auth).json()["job_id"]
    fetch_request(conn, train_request_id(running)).set_status("started")
    JobState(conn).set_state(running, "running")
    r = client.delete(f"/v1/jobs/{running}", headers=auth)
    assert r.status_code == 202 and r.json()["state"] == "cancelling"
    assert JobState(conn).cancel_requested(running)


def test_unknown_jobs(client, auth):
    for path in ("/v1/jobs/nosuch", "/v1/jobs/..", "/v1/jobs/nosuch/events"):
        assert client.get(path, headers=auth).status_code == 404, path


def test_event_stream_lists_checkpoints_as_the_trainer_does(layout):
    # The gateway reads checkpoints without importing TensorFlow; same answer.
    from incept.checkpoints import checkpoint_prefix, list_checkpoints
    from services.gateway.jobview import checkpoint_outcomes

    job_id = "flowers-20260101-000000-abcdef"
    run = layout.run(job_id)
    for step in (3, 7, 9):
        save_checkpoint(layout, job_id, step)
    for shard in run.checkpoints.glob(checkpoint_prefix(run, 7).name + ".data-*"):
        shard.unlink()  # a checkpoint still being written: its data is not all there
    checkpoint_prefix(run, 9).with_suffix(".index").write_bytes(b"")
    write_json_atomic(run.eval_result(3), {"step": 3, "exported_version": 1})
    assert [o.step for o in checkpoint_outcomes(layout, job_id)] == list_checkpoints(run) == [3]
    assert checkpoint_outcomes(layout, job_id)[0].events == {("eval", 3), ("export", 3)}
