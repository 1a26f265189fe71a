"""Submitting a job against a real gateway (uvicorn, real Redis): a retry with
the same Idempotency-Key never trains twice, and a submission that fails
(Redis down) leaves no spec.json and no job behind."""

from __future__ import annotations

import httpx
import pytest

from incept.fsutil import write_json_atomic
from incept.queues import TRAIN_QUEUE, connect, rq_queue
from tests.services.gateway.conftest import (  # noqa: F401 (fixtures)
    TOKEN,
    exported_models,
    make_gateway,
)

SPEC = {"dataset": "flowers", "model_name": "tiny", "max_steps": 5, "batch_size": 4}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def flowers(layout):
    d = layout.dataset("flowers")
    d.mkdir(parents=True)
    write_json_atomic(d / "dataset.json", {"class_names": ["a", "b"], "counts": {"train": 8}})


def test_a_retry_with_the_same_idempotency_key_trains_once(make_gateway, flowers, layout,  # noqa: F811
                                                          redis_url):
    gw = make_gateway()
    with httpx.Client(base_url=gw.url, headers=AUTH, timeout=60) as c:
        first = c.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "retry-1"})
        again = c.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "retry-1"})
        assert first.status_code == again.status_code == 202, (first.text, again.text)
        assert again.json()["job_id"] == first.json()["job_id"]
        other = c.post("/v1/jobs", json={**SPEC, "max_steps": 6},
                       headers={"Idempotency-Key": "retry-1"})
        assert other.status_code == 409 and "different job spec" in other.text
        assert c.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "x" * 201}).status_code == 422
    assert [p.name for p in layout.runs.iterdir()] == [first.json()["job_id"]]
    assert len(rq_queue(connect(redis_url), TRAIN_QUEUE).job_ids) == 1


def test_a_failed_submission_leaves_nothing_behind(make_gateway, flowers, layout,  # noqa: F811
                                                   tmp_path):
    from incept.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", persistent=False).start()
    try:
        gw = make_gateway(redis_url=server.url)
        with httpx.Client(base_url=gw.url, headers=AUTH, timeout=60) as c:
            assert c.post("/v1/jobs", json=SPEC).status_code == 202
            server.stop()
            r = c.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "k"})
            assert r.status_code == 503 and r.headers["retry-after"], r.text
    finally:
        server.stop()
    assert len(list(layout.runs.iterdir())) == 1  # only the first job's folder
    assert all((p / "spec.json").exists() for p in layout.runs.iterdir())

