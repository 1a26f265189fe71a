"""Names that are not names (issue 14 item 6), stream positions that are not
stream ids (item 11), and what a client shows of a refused spec (item 11b)."""

from __future__ import annotations

import pytest

from incept.client import GatewayClient, GatewayError
from tests.security.conftest import TOKEN


def test_a_dataset_name_with_a_trailing_newline_is_a_400(system, http):
    r = http.post("/v1/datasets", params={"name": "a\n"}, content=b"PK\x05\x06" + bytes(18),
                  headers={"Content-Type": "application/zip"})
    assert r.status_code == 400, r.text
    assert "invalid dataset name" in r.json()["detail"]
    assert system.uploads_left() == []


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/jobs/a%0A"),
    ("GET", "/v1/jobs/a%0A/events"),
    ("DELETE", "/v1/jobs/a%0A"),
    ("GET", "/v1/datasets/a%0A"),
    ("GET", "/v1/models/flowers%0A"),
    ("POST", "/v1/models/flowers%0A:predict"),
    ("GET", "/v1/jobs/..%2F..%2Fetc"),
])
def test_names_in_paths_that_cannot_be_folders_name_nothing(http, method, path):
    r = http.request(method, path, json={"instances": [{"b64": ""}]} if method == "POST" else None)
    assert r.status_code == 404, r.text
    if "%0A" in path:  # the route's own answer, not the router's
        # TF Serving's routes (/v1/models/{name}...) answer in its {"error": ...} body.
        key = "error" if path.startswith("/v1/models/") else "detail"
        assert r.json()[key].startswith("unknown "), r.text


def _live_job(system, job_id: str) -> None:
    import redis

    from incept.jobstate import JobState

    JobState(redis.Redis.from_url(system.redis_url)).create(job_id, dataset="d")


@pytest.mark.parametrize("last_id", ["18446744073709551616-0", "0-18446744073709551616",
                                     "99999999999999999999999-1", "1-2-3", "x"])
def test_a_last_event_id_that_is_no_stream_id_is_a_400(system, http, last_id):
    _live_job(system, "stream-job")
    with http.stream("GET", "/v1/jobs/stream-job/events",
                     headers={"Last-Event-ID": last_id}, timeout=10) as r:
        assert r.status_code == 400
        r.read()
    assert "Last-Event-ID" in r.json()["detail"]


def test_the_largest_stream_id_is_still_accepted(system, http):
    _live_job(system, "stream-job-2")
    with http.stream("GET", "/v1/jobs/stream-job-2/events",
                     headers={"Last-Event-ID": "18446744073709551615-18446744073709551615"},
                     timeout=10) as r:
        assert r.status_code == 200
        assert next(r.iter_lines()).startswith("retry:")


def test_the_client_prints_the_problems_of_a_422(system):
    with GatewayClient(system.url, TOKEN) as client, pytest.raises(GatewayError) as refused:
        client.submit({"dataset": "d", "model_name": "no_such_net", "batch_size": -1})
    message = str(refused.value)
    assert refused.value.status_code == 422
    assert "invalid job spec" in message
    assert "no_such_net" in message and "batch_size" in message
