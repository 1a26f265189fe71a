"""TF Serving's REST API, table-driven from its documentation (api_rest.md):
every request form is sent to the TF Serving double (which follows the
documentation) and to the gateway with each backend (in-process, gRPC and REST,
the last two in front of the double), and the answers must be the same field
for field: status code, keys, JSON types, strings and booleans exactly, floats
to float32 precision. A client that knows only TF Serving's documentation gets
the same answer from the gateway as from TF Serving's REST port."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field

import httpx
import pytest

from tests.fakes.tfserving import FakeTFServing
from tests.services.gateway.conftest import CLASSES

OUTPUT_TYPES = {"probabilities": float, "classes": int, "labels": str, "scores": float,
                "ood_score": float, "is_unknown": bool}
OUTPUT_DTYPES = {"probabilities": "DT_FLOAT", "classes": "DT_INT32", "labels": "DT_STRING",
                 "scores": "DT_FLOAT", "ood_score": "DT_FLOAT", "is_unknown": "DT_BOOL"}


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


@dataclass
class Case:
    name: str
    method: str
    path: str
    status: int
    body: object = None  # JSON body, or a function of the images
    raw: bytes | None = None
    headers: dict = field(default_factory=dict)


def cases(images: list[bytes]) -> list[Case]:
    two = [b64(i) for i in images[:2]]
    truncated = images[0][: len(images[0]) * 2 // 3]
    status, meta = "/v1/models/flowers", "/v1/models/flowers/metadata"
    predict = "/v1/models/flowers:predict"
    return [
        # Model status API
        Case("status", "GET", status, 200),
        Case("status of a version", "GET", "/v1/models/flowers/versions/1", 200),
        Case("status by label", "GET", "/v1/models/flowers/labels/latest", 200),
        Case("status of a version not served", "GET", "/v1/models/flowers/versions/7", 404),
        Case("status of an unknown label", "GET", "/v1/models/flowers/labels/nolabel", 400),
        Case("status of an unknown model", "GET", "/v1/models/nosuch", 404),
        # Model metadata API
        Case("metadata", "GET", meta, 200),
        Case("metadata of a version", "GET", "/v1/models/flowers/versions/1/metadata", 200),
        Case("metadata by label", "GET", "/v1/models/flowers/labels/latest/metadata", 200),
        Case("metadata of a version not served", "GET", "/v1/models/flowers/versions/7/metadata", 404),
        Case("metadata of an unknown model", "GET", "/v1/models/nosuch/metadata", 404),
        # Predict API: row and columnar forms
        Case("row, the input's value per instance", "POST", predict, 200, {"instances": two}),
        Case("row, named inputs", "POST", predict, 200,
             {"instances": [{"images": v} for v in two]}),
        Case("columnar, named inputs", "POST", predict, 200, {"inputs": {"images": two}}),
        Case("columnar, the one input's value", "POST", predict, 200, {"inputs": two}),
        Case("signature_name given", "POST", predict, 200,
             {"signature_name": "serving_default", "instances": two}),
        Case("sent the way curl -d sends it", "POST", predict, 200,
             raw=f'{{"instances": [{{"b64": "{two[0]["b64"]}"}}]}}'.encode(),
             headers={"Content-Type": "application/x-www-form-urlencoded"}),
        Case("a version pinned", "POST", "/v1/models/flowers/versions/1:predict", 200,
             {"instances": two}),
        Case("a label pinned", "POST", "/v1/models/flowers/labels/latest:predict", 200,
             {"inputs": {"images": two}}),
        Case("the open-set flags", "POST", "/v1/models/strict:predict", 200, {"instances": two}),
        # ... and what TF Serving refuses
        Case("a version not served", "POST", "/v1/models/flowers/versions/7:predict", 404,
             {"instances": two}),
        Case("an unknown label", "POST", "/v1/models/flowers/labels/nolabel:predict", 400,
             {"instances": two}),
        Case("an unknown model", "POST", "/v1/models/nosuch:predict", 404, {"instances": two}),
        Case("an unknown signature", "POST", predict, 400,
             {"signature_name": "nope", "instances": two}),
        Case("both instances and inputs", "POST", predict, 400, {"instances": two, "inputs": two}),
        Case("neither instances nor inputs", "POST", predict, 400, {"signature_name": "serving_default"}),
        Case("not JSON", "POST", predict, 400, raw=b"{not json"),
        Case("an unknown input name", "POST", predict, 400, {"instances": [{"pixels": two[0]}]}),
        Case("bad base64", "POST", predict, 400, {"instances": [{"b64": "%%%"}]}),
        Case("an image the model cannot decode", "POST", predict, 400, {"instances": [b64(truncated)]}),
        Case("not an image", "POST", predict, 400, {"instances": [b64(b"hello")]}),
    ]


def call(client: httpx.Client, case: Case) -> httpx.Response:
    if case.raw is not None:
        return client.request(case.method, case.path, content=case.raw, headers=case.headers)
    return client.request(case.method, case.path, json=case.body, headers=case.headers)


def same(expected, got, where: str = "") -> list[str]:
    """Differences between two JSON values: same keys, types and strings; floats
    equal to float32 precision (the gateway's batch may run a different kernel)."""
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(expected) != set(got):
            return [f"{where}: keys {sorted(expected)} != {sorted(got) if isinstance(got, dict) else got!r}"]
        return [d for k in expected for d in same(expected[k], got[k], f"{where}.{k}")]
    if isinstance(expected, list):
        if not isinstance(got, list) or len(expected) != len(got):
            return [f"{where}: {expected!r:.80} != {got!r:.80}"]
        return [d for i, (a, b) in enumerate(zip(expected, got, strict=True))
                for d in same(a, b, f"{where}[{i}]")]
    if type(expected) is not type(got):
        return [f"{where}: {type(expected).__name__} {expected!r} != {type(got).__name__} {got!r}"]
    if isinstance(expected, float):
        ok = (math.isnan(expected) and math.isnan(got)) or math.isclose(
            expected, got, rel_tol=1e-5, abs_tol=1e-6)
        return [] if ok else [f"{where}: {expected} != {got}"]
    return [] if expected == got else [f"{where}: {expected!r} != {got!r}"]


def check_documented_shape(case: Case, body: dict) -> None:
    """What api_rest.md promises, checked on the double's answer itself."""
    if case.status != 200:
        assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
    elif case.path.endswith("metadata"):
        assert body["model_spec"] == {"name": "flowers", "signature_name": "", "version": "1"}
        sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert sig["method_name"] == "tensorflow/serving/predict"
        assert sig["inputs"]["images"]["dtype"] == "DT_STRING"
        assert sig["inputs"]["images"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
        assert {k: v["dtype"] for k, v in sig["outputs"].items()} == OUTPUT_DTYPES
    elif case.method == "GET":
        assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
            "error_code": "OK", "error_message": ""}}]}
    elif "predictions" in body:
        for row in body["predictions"]:
            assert set(row) == set(OUTPUT_TYPES)
            for name, kind in OUTPUT_TYPES.items():
                values = row[name] if isinstance(row[name], list) else [row[name]]
                assert all(type(v) is kind for v in values), (name, row[name])
            assert set(row["labels"]) <= set(CLASSES) and len(row["probabilities"]) == len(CLASSES)
            assert row["is_unknown"] is case.path.startswith("/v1/models/strict")
    else:
        assert list(body) == ["outputs"] and set(body["outputs"]) == set(OUTPUT_TYPES)
        assert len(body["outputs"]["ood_score"]) == 2


@pytest.fixture
def tfserving(exported_models):
    # TF Serving knows labels from its model config: give "latest" the served version.
    server = FakeTFServing(exported_models, version_labels={"latest": 1}).start()
    yield server
    server.stop()


def test_the_documented_api_same_from_the_double_and_the_gateway(make_gateway, tfserving, images):
    targets = {"tfserving": tfserving.rest_url}
    for backend, extra in (("inprocess", {}), ("grpc", {"tfserving_grpc": tfserving.grpc_target}),
                           ("rest", {"tfserving_rest": tfserving.rest_url})):
        targets[f"gateway/{backend}"] = make_gateway(predict_backend=backend, **extra).url
    clients = {name: httpx.Client(base_url=url, timeout=60) for name, url in targets.items()}
    problems = []
    try:
        for case in cases(images):
            reference = call(clients["tfserving"], case)
            assert reference.status_code == case.status, (case.name, reference.text)
            check_documented_shape(case, reference.json())
            for name in targets:
                if name == "tfserving":
                    continue
                got = call(clients[name], case)
                if got.status_code != case.status:
                    problems.append(f"{case.name} via {name}: {got.status_code} {got.text[:200]}")
                elif case.status != 200:
                    error = got.json()
                    if list(error) != ["error"] or not isinstance(error["error"], str):
                        problems.append(f"{case.name} via {name}: not {{\"error\": ...}}: {error}")
                else:
                    problems += [f"{case.name} via {name}{d}" for d in same(reference.json(), got.json())]
                assert "Traceback" not in got.text
    finally:
        for c in clients.values():
            c.close()
    assert not problems, "\n".join(problems)


def test_row_and_columnar_answers_hold_the_same_tensors(client, images):
    rows = client.post("/v1/models/flowers:predict",
                       json={"instances": [b64(i) for i in images]}).json()["predictions"]
    columns = client.post("/v1/models/flowers:predict",
                          json={"inputs": {"images": [b64(i) for i in images]}}).json()["outputs"]
    assert not same(columns, {k: [r[k] for r in rows] for k in columns})
    assert len(rows) == len(images)
    # Top-k, best first, as the signature documents it.
    for row in rows:
        assert row["scores"] == sorted(row["scores"], reverse=True)
        assert [CLASSES[c] for c in row["classes"]] == row["labels"]


def test_limits_and_auth_hold_on_the_drop_in_routes(make_gateway, images):
    from tests.services.gateway.conftest import TOKEN

    gw = make_gateway(protect_predict=True, max_images_per_request=2, max_image_bytes=100_000)
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        body = {"instances": [b64(images[0])] * 3}
        for method, path in (("GET", "/v1/models/flowers"), ("GET", "/v1/models/flowers/metadata"),
                             ("POST", "/v1/models/flowers:predict")):
            r = c.request(method, path, json=body if method == "POST" else None)
            assert r.status_code == 401 and list(r.json()) == ["error"], r.text
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = c.post("/v1/models/flowers:predict", json=body, headers=auth)
        assert r.status_code == 413 and "limit is 2" in r.json()["error"]
        r = c.post("/v1/models/flowers:predict", json={"inputs": [b64(images[0] + b"\0" * 100_000)]},
                   headers=auth)
        assert r.status_code == 413 and list(r.json()) == ["error"]
        r = c.post("/v1/models/flowers:predict", json={"inputs": [b64(images[0])]}, headers=auth)
        assert r.status_code == 200 and set(r.json()["outputs"]) == set(OUTPUT_TYPES)
