"""Liveness, readiness, the page and metrics through the served gateway (routes/health.py, routes/page.py)."""

from __future__ import annotations

import time

from incept import __version__
from tests.services.gateway.conftest import TOKEN, finished_job


def test_health(client, make_gateway, layout):
    import httpx

    assert client.get("/healthz").json() == {"status": "ok", "checks": {}, "version": __version__}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["redis"] == "ok"
    gw = make_gateway(redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "unreachable" in r.json()["checks"]["redis"]
        # Job history still comes from the volume.
        finished_job(layout)
        jobs = c.get("/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
        assert jobs.status_code == 200 and len(jobs.json()["jobs"]) == 1


def test_ready_while_serving_what_it_can(make_gateway, layout):
    """One model that cannot load (a broken export) does not take the others offline;
    readiness names it (to a token holder: the details are not public)."""
    import httpx

    gw = make_gateway()
    (layout.models / "broken" / "1").mkdir(parents=True)
    (layout.models / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    with httpx.Client(base_url=gw.url, timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        deadline = time.monotonic() + 60
        while not ("broken" in (body := c.get("/readyz").json())["checks"]["backend"]
                   and "'strict'" in body["checks"]["backend"]):  # both others loaded
            assert time.monotonic() < deadline, body
            time.sleep(0.5)
        r = c.get("/readyz")
        assert r.status_code == 200, r.text
        backend = r.json()["checks"]["backend"]
        assert "serves 'flowers', 'strict'" in backend and "not served: broken" in backend


def test_page_and_metrics(client):
    r = client.get("/")
    assert r.status_code == 200 and "<title>incept</title>" in r.text
    assert client.get("/static/app.js").status_code == 200
    m = client.get("/metrics")
    assert m.status_code == 200 and "http_requests_total" in m.text
