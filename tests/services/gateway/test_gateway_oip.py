"""The Open Inference Protocol (KServe v2) on a real gateway with real SavedModels,
driven by a stock third-party client (tritonclient, HTTP and gRPC) and by hand
for the JSON forms and the errors: the same classes as TF Serving's :predict."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from incept.redis_server import free_port
from tests.services.gateway.conftest import CLASSES, TOKEN

OUTPUTS = {"probabilities": "FP32", "classes": "INT32", "labels": "BYTES", "scores": "FP32",
           "ood_score": "FP32", "is_unknown": "BOOL"}


@pytest.fixture
def oip_gateway(make_gateway):
    port = free_port()
    gateway = make_gateway(oip_grpc_port=port)
    gateway.grpc_port = port
    return gateway


def _predict_labels(url: str, images: list[bytes], model: str = "flowers") -> list[list[str]]:
    body = {"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}
    r = httpx.post(f"{url}/v1/models/{model}:predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return [p["labels"] for p in r.json()["predictions"]]


def _triton_input(module, images: list[bytes], binary: bool = True):
    tensor = module.InferInput("images", [len(images)], "BYTES")
    kw = {"binary_data": binary} if module.__name__.endswith("http") else {}
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), **kw)
    return tensor


def test_a_stock_http_client_lists_reads_and_classifies(oip_gateway, images):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(oip_gateway.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    listed = {m["name"]: m for m in client.get_model_repository_index()}
    assert listed["flowers"]["state"] == "READY" and listed["flowers"]["version"] == "1"
    assert client.is_model_ready("flowers") and client.is_model_ready("flowers", "1")
    assert not client.is_model_ready("flowers", "7")
    meta = client.get_model_metadata("flowers")
    assert meta["versions"] == ["1"] and meta["platform"] == "tensorflow_savedmodel"
    assert meta["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == OUTPUTS
    assert {o["name"]: o["shape"] for o in meta["outputs"]}["probabilities"] == [-1, len(CLASSES)]

    # The JPEGs (and a PNG) travel through the binary tensor data extension.
    outputs = [triton.InferRequestedOutput("labels", binary_data=True),
               triton.InferRequestedOutput("scores", binary_data=False),
               triton.InferRequestedOutput("is_unknown", binary_data=True)]
    result = client.infer("flowers", [_triton_input(triton, images)], outputs=outputs,
                          request_id="req-42")
    response = result.get_response()
    assert response["id"] == "req-42" and response["model_version"] == "1"
    assert [o["name"] for o in response["outputs"]] == ["labels", "scores", "is_unknown"]
    labels = [[lb.decode() for lb in row] for row in result.as_numpy("labels")]
    assert labels == _predict_labels(oip_gateway.url, images)
    scores = result.as_numpy("scores")
    assert scores.shape == (len(images), len(CLASSES)) and np.all(np.diff(scores, axis=1) <= 0)
    assert result.as_numpy("is_unknown").tolist() == [False] * len(images)
    # No outputs named: every output, all binary (the client asks for that).
    everything = client.infer("strict", [_triton_input(triton, images[:1])])
    assert {o["name"] for o in everything.get_response()["outputs"]} == set(OUTPUTS)
    assert everything.as_numpy("is_unknown").tolist() == [True]
    client.close()


def test_a_stock_grpc_client_lists_reads_and_classifies(oip_gateway, images):
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{oip_gateway.grpc_port}")
    assert client.is_server_live() and client.is_server_ready()
    assert [m.name for m in client.get_model_repository_index().models] == ["flowers", "strict"]
    assert client.is_model_ready("flowers")
    meta = client.get_model_metadata("flowers")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("images", "BYTES", [-1])]
    assert {t.name: t.datatype for t in meta.outputs} == OUTPUTS
    result = client.infer("flowers", [_triton_input(triton, images)], request_id="g-1",
                          outputs=[triton.InferRequestedOutput("labels"),
                                   triton.InferRequestedOutput("ood_score")])
    assert result.get_response().id == "g-1"
    labels = [[lb.decode() for lb in row] for row in result.as_numpy("labels")]
    assert labels == _predict_labels(oip_gateway.url, images)
    assert result.as_numpy("ood_score").shape == (len(images),)
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nosuch", [_triton_input(triton, images[:1])])
    with pytest.raises(InferenceServerException, match="not a JPEG or PNG"):
        client.infer("flowers", [_triton_input(triton, [b"hello"])])
    client.close()


def test_json_bytes_requested_outputs_and_errors(client, images):
    data = [base64.b64encode(i).decode() for i in images[:2]]
    body = {"id": "j1", "inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": data}],
            "outputs": [{"name": "labels"}, {"name": "classes"}]}
    r = client.post("/v2/models/flowers/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"] == "j1" and answer["model_name"] == "flowers"
    labels = {o["name"]: o for o in answer["outputs"]}["labels"]
    assert labels["datatype"] == "BYTES" and labels["shape"] == [2, len(CLASSES)]
    flat = [CLASSES[c] for c in {o["name"]: o for o in answer["outputs"]}["classes"]["data"]]
    assert labels["data"] == flat  # row-major, the same order for both outputs

    def refused(path: str, payload, status: int, text: str) -> None:
        r = client.post(path, json=payload)
        assert r.status_code == status, r.text
        assert list(r.json()) == ["error"] and text in r.json()["error"], r.text

    infer = "/v2/models/flowers/infer"
    one = {"name": "images", "datatype": "BYTES", "shape": [1], "data": data[:1]}
    refused("/v2/models/nosuch/infer", {"inputs": [one]}, 404, "unknown model")
    refused("/v2/models/flowers/versions/7/infer", {"inputs": [one]}, 404, "Specific(flowers, 7)")
    refused(infer, {"inputs": [{**one, "name": "pixels"}]}, 400, "only input")
    refused(infer, {"inputs": [{**one, "datatype": "FP32"}]}, 400, "BYTES")
    refused(infer, {"inputs": [{**one, "shape": [3]}]}, 400, "1 elements")
    refused(infer, {"inputs": [{**one, "data": ["%%%"]}]}, 400, "base64")
    refused(infer, {"inputs": [{**one, "data": [base64.b64encode(b"hello").decode()]}]}, 400,
            "not a JPEG or PNG")
    refused(infer, {"inputs": [one], "outputs": [{"name": "logits"}]}, 400, "unknown output")
    refused(infer, {"inputs": [{**one, "shape": [33], "data": data[:1] * 33}]}, 413, "limit is 32")
    # A flood of elements is refused before it is parsed or unpacked.
    flood = {"inputs": [{**one, "shape": [1], "data": [""] * 200_000}]}
    refused(infer, flood, 413, "more than 32 images")
    r = client.post(infer, content=b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": '
                    b'[1000000], "parameters": {"binary_data_size": 4}}]}\0\0\0\0',
                    headers={"Inference-Header-Content-Length": "112"})
    assert r.status_code == 413, r.text
    r = client.post(infer, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = client.post(infer, content=b'{"inputs": []}xx', headers={"Inference-Header-Content-Length": "99"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    assert client.get("/v2/models/nosuch").status_code == 404
    assert client.get("/v2/models/nosuch/ready").status_code == 400


def test_same_auth_on_v2(make_gateway, images):
    port = free_port()
    gw = make_gateway(protect_predict=True, oip_grpc_port=port)
    body = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(images[0]).decode()]}]}
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        # Health is public (probes carry no token), as /healthz and /readyz are.
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        for method, path in (("GET", "/v2"), ("GET", "/v2/models/flowers"),
                             ("GET", "/v2/models/flowers/ready"), ("POST", "/v2/repository/index"),
                             ("POST", "/v2/models/flowers/infer")):
            r = c.request(method, path, json=body if method == "POST" else None)
            assert r.status_code == 401 and list(r.json()) == ["error"], r.text
        r = c.post("/v2/models/flowers/infer", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready()
    with pytest.raises(InferenceServerException, match="token"):
        client.get_model_metadata("flowers")
    assert client.get_model_metadata("flowers", headers={"authorization": f"Bearer {TOKEN}"}).name \
        == "flowers"
    client.close()


@pytest.mark.parametrize("backend", ["grpc", "rest"])
def test_v2_in_front_of_tf_serving_answers_as_in_process(make_gateway, exported_models, images,
                                                         backend):
    import tritonclient.http as triton

    from tests.fakes.tfserving import FakeTFServing

    server = FakeTFServing(exported_models).start()
    try:
        reference = make_gateway()
        gw = make_gateway(predict_backend=backend, tfserving_grpc=server.grpc_target,
                          tfserving_rest=server.rest_url)
        client = triton.InferenceServerClient(gw.url.removeprefix("http://"))
        meta = client.get_model_metadata("flowers")
        assert {o["name"]: o["datatype"] for o in meta["outputs"]} == OUTPUTS
        result = client.infer("flowers", [_triton_input(triton, images)])
        # Every output in the signature's datatype, whatever the backend's wire form.
        assert {o["name"]: o["datatype"] for o in result.get_response()["outputs"]} == OUTPUTS
        labels = [[lb.decode() for lb in row] for row in result.as_numpy("labels")]
        assert labels == _predict_labels(reference.url, images)
        assert result.get_response()["model_version"] == "1"
        client.close()
    finally:
        server.stop()
