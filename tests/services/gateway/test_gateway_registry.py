"""GET /v1/registry/models and PUT /v1/registry/models/{name}/pin: versions with
their origin and metrics, and rolling back and forth under a steady stream of
predictions (the in-process backend follows the pin; no request fails)."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx

from tests.services.gateway.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def second_version(layout) -> None:
    """models/flowers/2: a copy of version 1 with its own manifest, renamed into place."""
    base = layout.model("flowers")
    tmp = base / ".tmp-export-2"
    shutil.copytree(base / "1", tmp)
    manifest = json.loads((tmp / "manifest.json").read_text())
    (tmp / "manifest.json").write_text(json.dumps({
        **manifest, "version": 2, "job_id": "flowers-20260101-000000-abcdef", "step": 20,
        "metrics": {"accuracy": 0.9, "recall_at_5": 1.0}, "export_reason": "accuracy 0.9 beats 0.8"}))
    tmp.rename(base / "2")


def wait_for(predicate, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_registry_lists_versions_with_their_origin(make_gateway, layout):
    gw = make_gateway(model_poll_s=0.1)
    second_version(layout)
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        assert c.get("/v1/registry/models").status_code == 401
        wait_for(lambda: c.get("/v1/registry/models/flowers", headers=AUTH).json()["available"] == [2])
        body = c.get("/v1/registry/models/flowers", headers=AUTH).json()
        assert body["pinned"] is None and body["serving"] == 2
        v2, v1 = body["versions"]
        assert (v2["version"], v2["job_id"], v2["step"], v2["reason"]) == (
            2, "flowers-20260101-000000-abcdef", 20, "accuracy 0.9 beats 0.8")
        assert v2["metrics"]["accuracy"] == 0.9 and v1["version"] == 1
        assert {m["name"] for m in c.get("/v1/registry/models", headers=AUTH).json()["models"]} == {
            "flowers", "strict"}
        r = c.put("/v1/registry/models/flowers/pin", json={"version": 7}, headers=AUTH)
        assert r.status_code == 409 and "no version 7" in r.json()["detail"]
        assert c.put("/v1/registry/models/nope/pin", json={"version": 1}, headers=AUTH).status_code == 404
        assert c.put("/v1/registry/models/flowers/pin", json={"version": 0},
                     headers=AUTH).status_code == 422


def test_rolling_back_and_forth_never_interrupts_predictions(make_gateway, layout, images):
    gw = make_gateway(model_poll_s=0.1)
    second_version(layout)
    answers: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def predict_forever():
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/classify/flowers", files={"images": ("a.jpg", images[0], "image/jpeg")})
                answers.append((r.status_code, r.json().get("version") if r.status_code == 200 else None))

    def served_now() -> int | None:
        return answers[-1][1] if answers else None

    threads = [threading.Thread(target=predict_forever) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            wait_for(lambda: served_now() == 2)
            for target in (1, None, 1, None):
                r = c.put("/v1/registry/models/flowers/pin", json={"version": target}, headers=AUTH)
                assert r.status_code == 200 and r.json()["pinned"] == target
                wait_for(lambda t=target: served_now() == (t or 2))
                seen = len(answers)
                wait_for(lambda s=seen: len(answers) > s + 20)  # still answering afterwards
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    statuses = {s for s, _ in answers}
    assert statuses == {200}, [a for a in answers if a[0] != 200][:5]
    assert len(answers) > 100
    # Every pin and unpin shows as a change of the version that answers.
    switches = sum(1 for a, b in zip(answers, answers[1:], strict=False) if a[1] != b[1])
    assert switches >= 4
