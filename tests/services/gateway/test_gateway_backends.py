"""The TF Serving backends (gRPC and REST) against the TF Serving test double
running the real exported SavedModel; the same image gets the same answer
through gRPC, REST and the in-process backend."""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np
import pytest

from tests.fakes.tfserving import FakeTFServing


@pytest.fixture
def tfserving(exported_models):
    server = FakeTFServing(exported_models).start()
    yield server
    server.stop()


def _predict(url: str, images: list[bytes], model: str = "flowers") -> httpx.Response:
    with httpx.Client(base_url=url, timeout=60) as c:
        return c.post(f"/v1/classify/{model}",
                      json={"instances": [{"b64": base64.b64encode(i).decode()} for i in images]})


def test_same_answer_through_grpc_rest_and_inprocess(make_gateway, tfserving, images):
    answers = {}
    for backend, extra in (("inprocess", {}), ("grpc", {"tfserving_grpc": tfserving.grpc_target}),
                           ("rest", {"tfserving_rest": tfserving.rest_url})):
        gw = make_gateway(predict_backend=backend, **extra)
        r = _predict(gw.url, images)
        assert r.status_code == 200, (backend, r.text)
        answers[backend] = r.json()
        with httpx.Client(base_url=gw.url, timeout=60) as c:
            listed = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
            assert listed["flowers"]["backend"] == backend
            assert {"version": 1, "state": "AVAILABLE", "error": ""} in listed["flowers"]["versions"]
            assert c.get("/readyz").status_code == 200
            r = c.post("/v1/classify/nosuch", json={"instances": [{"b64": base64.b64encode(images[0]).decode()}]})
            assert r.status_code == 404, (backend, r.text)
            assert c.get("/v1/models/nosuch").status_code == 404
            assert _predict(gw.url, images[:1], "strict").json()["predictions"][0]["unknown"] is True
    reference = answers["inprocess"]
    for backend in ("grpc", "rest"):
        got = answers[backend]
        assert got["version"] == reference["version"] == 1
        for a, b in zip(reference["predictions"], got["predictions"], strict=True):
            assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]], backend
            np.testing.assert_allclose([t["score"] for t in a["top"]], [t["score"] for t in b["top"]],
                                       rtol=1e-5, atol=1e-7)
            assert a["unknown"] == b["unknown"]
            assert a["ood_score"] == pytest.approx(b["ood_score"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("backend", ["grpc", "rest"])
def test_backend_down_gives_503_with_retry_after(make_gateway, backend, images):
    from incept.redis_server import free_port

    port = free_port()  # nothing listens there
    gw = make_gateway(predict_backend=backend, backend_timeout_s=2.0,
                      tfserving_grpc=f"127.0.0.1:{port}", tfserving_rest=f"http://127.0.0.1:{port}")
    r = _predict(gw.url, images[:1])
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    assert "did not answer" in r.json()["detail"]
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        assert c.get("/readyz").status_code == 503
        assert c.get("/v1/models/flowers").status_code == 503
        listed = c.get("/v1/models").json()["models"]  # the list still shows what is on disk
        assert {m["name"]: m["versions_on_disk"] for m in listed}["flowers"] == [1]
        metrics = c.get("/metrics").text
    assert f'incept_backend_errors_total{{backend="{backend}"' in metrics


def test_grpc_backend_survives_a_tfserving_restart(make_gateway, exported_models, images):
    first = FakeTFServing(exported_models).start()
    port = first.grpc_port
    gw = make_gateway(predict_backend="grpc", tfserving_grpc=first.grpc_target)
    assert _predict(gw.url, images[:1]).status_code == 200
    first.stop()
    assert _predict(gw.url, images[:1]).status_code == 503
    second = FakeTFServing(exported_models, grpc_port=port)
    second.start()
    try:
        # The shared channel reconnects; a client that honours Retry-After gets its answer.
        deadline = time.monotonic() + 30
        while (r := _predict(gw.url, images[:1])).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200, r.text
    finally:
        second.stop()


def test_bad_image_through_grpc_is_400(make_gateway, tfserving, images):
    gw = make_gateway(predict_backend="grpc", tfserving_grpc=tfserving.grpc_target)
    r = _predict(gw.url, [images[0][:100]])
    assert r.status_code == 400 and "cannot be decoded" in r.text


def test_tfserving_double_runs_as_a_process(exported_models, images):
    """The double as a process, with tensorflow_model_server's flags, spoken to with
    tensorflow-serving-api's own stub."""
    import subprocess
    import sys
    from pathlib import Path

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from incept.redis_server import free_port

    grpc_port, rest_port = free_port(), free_port()
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.tfserving", f"--port={grpc_port}",
                             f"--rest_api_port={rest_port}", f"--model_base_path={exported_models}"],
                            cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert "serving" in proc.stdout.readline()
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "flowers"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images[:2], dtype=tf.string))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        assert tf.make_ndarray(response.outputs["probabilities"]).shape == (2, 3)
        assert response.model_spec.version.value == 1
        r = httpx.get(f"http://127.0.0.1:{rest_port}/v1/models/flowers", timeout=30)
        assert r.json()["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        proc.terminate()
        proc.wait(30)
