"""What answers without a token (issue 14 item 16), and what a gateway cleans
up when it starts and refuses when the volume is full (items 2, 3)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.security.conftest import AUTH, start_system, stop_system


def test_readyz_keeps_its_reasons_for_token_holders(system):
    anonymous = httpx.get(f"{system.url}/readyz", timeout=30).json()
    assert set(anonymous["checks"].values()) <= {"ok", "not ready", "unreachable", "low on space"}
    detailed = httpx.get(f"{system.url}/readyz", headers=AUTH, timeout=30).json()
    assert "bytes free" in detailed["checks"]["volume"]


@pytest.fixture
def locked_down(tmp_path, redis_server, exported_models):
    """A gateway with the public surface turned off, a full volume, and the
    leftovers of a crashed upload (old) next to one in progress (fresh)."""
    uploads = tmp_path / "data" / "uploads"
    for name in ("0123abandoned", "0123abandoned.archive", "0456receiving"):
        path = uploads / name
        if name.endswith("archive"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        else:
            (path / "a").mkdir(parents=True)
            (path / "a" / "1.jpg").write_bytes(b"x")
    (tmp_path / "data" / "datasets" / "shapes").mkdir(parents=True)  # a job's dataset
    hours_ago = time.time() - 3 * 3600
    for folder, _dirs, files in os.walk(uploads):
        for entry in [folder, *(os.path.join(folder, f) for f in files)]:
            if "abandoned" in entry:
                os.utime(entry, (hours_ago, hours_ago))
    system = start_system(tmp_path, redis_server.url, exported_models, worker=False,
                          metrics_public="false", api_docs="false", readyz_details_public="true",
                          min_free_bytes=2**62)
    yield system
    stop_system(system)


SPEC = {"dataset": "shapes", "model_name": "tiny", "image_size": 32, "batch_size": 8,
        "max_steps": 10}


def test_a_locked_down_gateway(locked_down):
    system = locked_down
    # The first requests after start: concurrent submissions all see every net
    # (issue 14, 11b: the nets registry was marked loaded before it was filled).
    with ThreadPoolExecutor(8) as pool, system.client(headers=AUTH) as http:
        codes = list(pool.map(lambda _: http.post("/v1/jobs", json=SPEC), range(8)))
    assert [r.status_code for r in codes] == [202] * 8, [r.text for r in codes]
    assert system.uploads_left() == ["0456receiving"]  # the abandoned upload is gone
    with system.client() as anonymous, system.client(headers=AUTH) as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert anonymous.get(path).status_code == 404
        assert anonymous.get("/metrics").status_code == 401
        assert http.get("/metrics").status_code == 200
        assert "bytes free" in anonymous.get("/readyz").json()["checks"]["volume"]
        r = http.post("/v1/datasets", params={"name": "full"}, content=b"x" * 100,
                      headers={"Content-Type": "application/zip"})
        assert r.status_code == 507 and "min_free_bytes" in r.json()["detail"]
    assert system.uploads_left() == ["0456receiving"]
    system.alive()
