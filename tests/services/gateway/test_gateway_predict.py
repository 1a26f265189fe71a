"""The gateway's own prediction route, ``/v1/classify/{name}`` (top classes,
"unknown"), through the served gateway with the in-process backend; TF Serving's
``:predict`` is tested in test_gateway_tfserving_rest.py."""

from __future__ import annotations

import base64

import numpy as np

from tests.services.gateway.conftest import CLASSES, TOKEN


def _b64(img: bytes) -> dict:
    return {"b64": base64.b64encode(img).decode()}


def test_predict_json_and_multipart_agree(client, images):
    r = client.post("/v1/classify/flowers", json={"instances": [_b64(i) for i in images]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "flowers" and body["version"] == 1
    assert len(body["predictions"]) == len(images)
    for p in body["predictions"]:
        assert [t["label"] for t in p["top"]] and set(t["label"] for t in p["top"]) == set(CLASSES)
        scores = [t["score"] for t in p["top"]]
        assert scores == sorted(scores, reverse=True)
        assert abs(sum(scores) - 1.0) < 1e-4  # k = C = 3: top-k covers every class
        assert p["unknown"] is False

    files = [("images", (f"x{i}.jpg", img, "image/jpeg")) for i, img in enumerate(images)]
    r2 = client.post("/v1/classify/flowers", files=files)
    assert r2.status_code == 200, r2.text
    for a, b in zip(body["predictions"], r2.json()["predictions"], strict=True):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        np.testing.assert_allclose([t["score"] for t in a["top"]], [t["score"] for t in b["top"]],
                                   rtol=1e-5)


def test_unknown_when_the_model_says_so(client, images):
    r = client.post("/v1/classify/strict", json={"instances": [_b64(images[0])]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["unknown"] is True


def test_concurrent_requests_are_batched_and_answered_each(client, gateway, images):
    import concurrent.futures

    import httpx

    def one(i):
        with httpx.Client(base_url=gateway.url, timeout=60) as c:
            return c.post("/v1/classify/flowers",
                          json={"instances": [_b64(images[i % len(images)])]}).json()

    alone = [client.post("/v1/classify/flowers", json={"instances": [_b64(img)]}).json()
             for img in images]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    for i, res in enumerate(results):
        expected = alone[i % len(images)]["predictions"][0]
        got = res["predictions"][0]
        assert [t["label"] for t in got["top"]] == [t["label"] for t in expected["top"]]
        np.testing.assert_allclose([t["score"] for t in got["top"]],
                                   [t["score"] for t in expected["top"]], rtol=1e-4, atol=1e-6)
    metrics = client.get("/metrics").text
    assert "incept_predict_batch_size_count" in metrics
    # Some call ran more than one image: the histogram's 1-bucket holds fewer than all calls.
    count = float(next(ln.split()[-1] for ln in metrics.splitlines()
                       if ln.startswith("incept_predict_batch_size_count")))
    ones = float(next(ln.split()[-1] for ln in metrics.splitlines()
                      if ln.startswith('incept_predict_batch_size_bucket{le="1.0"}')))
    assert ones < count


def test_predict_bad_inputs(client, images):
    url = "/v1/classify/flowers"
    cases = [
        (client.post(url, json={"instances": [{"b64": base64.b64encode(b"hello").decode()}]}), 415, "not a JPEG or PNG"),
        (client.post(url, json={"instances": [{"b64": base64.b64encode(images[0][:200]).decode()}]}), 400, "cannot be decoded"),
        (client.post(url, json={"instances": [{"b64": "%%%"}]}), 400, "base64"),
        (client.post(url, content=b"{not json", headers={"Content-Type": "application/json"}), 422, "invalid JSON"),
        (client.post(url, json={"instances": []}), 422, "instances"),
        (client.post(url, json={"nope": 1}), 422, "instances"),
        (client.post(url, content=b"abc", headers={"Content-Type": "text/plain"}), 415, "multipart"),
        (client.post(url, json={"instances": [_b64(images[0])] * 33}), 413, "limit is 32"),
        (client.post("/v1/classify/nosuch", json={"instances": [_b64(images[0])]}), 404, "unknown model"),
        (client.post("/v1/classify/a..b", json={"instances": [_b64(images[0])]}), 404, "unknown model"),
        (client.post(url, files=[("note", (None, "just text"))]), 400, "no file parts"),
    ]
    for r, status, text in cases:
        assert r.status_code == status, (r.status_code, r.text)
        assert text in r.text, r.text
        assert "Traceback" not in r.text


def test_size_limits(make_gateway, images):
    import httpx

    gw = make_gateway(max_image_bytes=1000, max_body_bytes=200_000)
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        big = images[0] + b"\0" * 2000  # a JPEG over the image limit
        r = c.post("/v1/classify/flowers", files=[("images", ("a.jpg", big, "image/jpeg"))])
        assert r.status_code == 413 and "larger than 1000 bytes" in r.text
        r = c.post("/v1/classify/flowers", content=b"x" * 300_000,
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413

        def chunks():  # no Content-Length: counted while read
            for _ in range(30):
                yield b"x" * 10_000

        r = c.post("/v1/classify/flowers", content=chunks(),
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413


def test_models_routes(client):
    import time

    deadline = time.monotonic() + 60
    while True:  # the poller may be loading the model still: listed LOADING first
        r = client.get("/v1/models")
        assert r.status_code == 200
        names = {m["name"]: m for m in r.json()["models"]}
        if names["flowers"]["versions"][0]["state"] != "LOADING" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert set(names) == {"flowers", "strict"}
    assert names["flowers"]["versions_on_disk"] == [1]
    assert names["flowers"]["versions"] == [{"version": 1, "state": "AVAILABLE", "error": ""}]


def test_new_version_is_picked_up(make_gateway, layout, images):
    import shutil
    import time

    import httpx

    gw = make_gateway(model_poll_s=0.2)
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        body = {"instances": [_b64(images[0])]}
        assert c.post("/v1/classify/flowers", json=body).json()["version"] == 1
        shutil.copytree(layout.models / "flowers" / "1", layout.models / "flowers" / ".tmp-2")
        (layout.models / "flowers" / ".tmp-2").rename(layout.models / "flowers" / "2")
        deadline = time.monotonic() + 60
        version = 1
        while version != 2 and time.monotonic() < deadline:
            r = c.post("/v1/classify/flowers", json=body)
            assert r.status_code == 200  # never an error while the swap happens
            version = r.json()["version"]
        assert version == 2


def test_protected_prediction(make_gateway, images):
    import httpx

    gw = make_gateway(protect_predict=True)
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        body = {"instances": [_b64(images[0])]}
        for path, method in (("/v1/classify/flowers", "POST"), ("/v1/models", "GET"),
                             ("/v1/models/flowers", "GET")):
            kw = {"json": body} if method == "POST" else {}
            assert c.request(method, path, **kw).status_code == 401
            assert c.request(method, path, headers={"Authorization": "Bearer wrong"}, **kw).status_code == 401
            assert c.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"}, **kw).status_code == 200


def test_a_corrupt_image_fails_only_its_own_request(client, gateway, images):
    import concurrent.futures

    import httpx

    truncated = images[0][: len(images[0]) * 2 // 3]  # header intact, pixel data cut
    r = client.post("/v1/classify/flowers", json={"instances": [_b64(truncated)]})
    assert r.status_code == 400 and "cannot be decoded" in r.text

    def one(i):
        img = truncated if i % 4 == 0 else images[i % len(images)]
        with httpx.Client(base_url=gateway.url, timeout=60) as c:
            return i, c.post("/v1/classify/flowers", json={"instances": [_b64(img)]}).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        statuses = dict(pool.map(one, range(24)))
    assert {i for i, s in statuses.items() if s == 400} == {i for i in range(24) if i % 4 == 0}
    assert all(s == 200 for i, s in statuses.items() if i % 4)


def test_no_servable_version_is_503_and_a_broken_export_is_not_served(make_gateway, layout, images):
    import shutil
    import time

    import httpx

    gw = make_gateway(model_poll_s=0.2)
    (layout.models / "empty").mkdir(parents=True)
    broken = layout.models / "flowers" / "2"
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        r = c.post("/v1/classify/empty", json={"instances": [_b64(images[0])]})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "no servable version" in r.json()["detail"]
        shutil.copytree(layout.models / "flowers" / "1", broken)
        (broken / "saved_model.pb").write_bytes(b"not a protobuf")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            versions = [{"version": int(v["version"]), "state": v["state"],
                         "error": v["status"]["error_message"]}
                        for v in c.get("/v1/models/flowers").json()["model_version_status"]]
            # Listed as LOADING first (as TF Serving does), then END once the load failed.
            if any(v["version"] == 2 and v["state"] not in ("START", "LOADING") for v in versions):
                break
            time.sleep(0.2)
        assert {"version": 1, "state": "AVAILABLE", "error": ""} in versions
        assert [v["state"] for v in versions if v["version"] == 2] == ["END"]
        r = c.post("/v1/classify/flowers", json={"instances": [_b64(images[0])]})
        assert r.status_code == 200 and r.json()["version"] == 1
