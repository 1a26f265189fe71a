"""A TensorFlow Serving test double (TF Serving has no pip or apt package here).

It speaks TF Serving's own protocols, built from tensorflow-serving-api and
TF Serving's REST documentation (api_rest.md), not from the gateway: gRPC
``tensorflow.serving.PredictionService/Predict``, ``GetModelMetadata`` and
``ModelService/GetModelStatus``; REST ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]``
(status), ``.../metadata`` and ``POST ...:predict`` in row and columnar form,
with ``{"error": ...}`` bodies. It answers by running the real exported
SavedModel (the newest version under ``<model_root>/<name>/``) with
``tf.saved_model.load``, as TF Serving does, and reads signatures from its
``saved_model.pb``."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.fakes.http import send_json

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
SIGNATURE = "serving_default"


class NotFound(Exception):
    pass


class ServedModels:
    """The newest version of each model (TF Serving's default version policy),
    and the version labels a model config would give (``version_labels``)."""

    def __init__(self, model_root: Path, version_labels: dict[str, int] | None = None):
        self.models: dict[str, tuple[int, object]] = {}
        self.paths: dict[str, Path] = {}
        for model_dir in sorted(Path(model_root).iterdir()):
            versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
            if versions:
                loaded = tf.saved_model.load(str(model_dir / str(versions[-1])))
                self.models[model_dir.name] = (versions[-1], loaded)
                self.paths[model_dir.name] = model_dir / str(versions[-1])
        self.version_labels = dict(version_labels or {})
        self.lock = threading.Lock()

    def resolve(self, name: str, version: str | None, label: str | None) -> int | None:
        if version is not None:
            return int(version)
        if label is None:
            return None
        if label not in self.version_labels:
            raise BadRequest(f"Unrecognized servable version label: {label}")
        return self.version_labels[label]

    def meta_graph(self, name: str):
        """The SavedModel's "serve" MetaGraphDef, as TF Serving reads it from disk."""
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((self.paths[name] / "saved_model.pb").read_bytes())
        return next(mg for mg in saved.meta_graphs if "serve" in mg.meta_info_def.tags)

    def signature_defs(self, name: str) -> dict:
        """SignatureDefMap in proto3's JSON mapping with proto field names and
        default values printed (TF Serving's metadata answer)."""
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in self.meta_graph(name).signature_def.items():
            sig_map.signature_def[key].CopyFrom(sig)
        return json_format.MessageToDict(sig_map, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def get(self, name: str, version: int | None) -> tuple[int, object]:
        if name not in self.models:
            raise NotFound(f"Servable not found for request: Latest({name})")
        served, obj = self.models[name]
        if version is not None and version != served:
            raise NotFound(f"Servable not found for request: Specific({name}, {version})")
        return served, obj

    def run(self, name: str, version: int | None, images: np.ndarray) -> tuple[int, dict]:
        served, obj = self.get(name, version)
        with self.lock:
            out = obj.signatures[SIGNATURE](images=tf.constant(images, dtype=tf.string))
        return served, {k: v.numpy() for k, v in out.items()}


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, models: ServedModels):
        self.models = models

    def Predict(self, request, context):
        name = request.model_spec.name
        version = request.model_spec.version.value if request.model_spec.HasField("version") else None
        if request.model_spec.signature_name not in ("", SIGNATURE):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"Serving signature name: \"{request.model_spec.signature_name}\" not found")
        if "images" not in request.inputs:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input 'images' is missing")
        try:
            served, outputs = self.models.run(name, version, tf.make_ndarray(request.inputs["images"]))
        except NotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except tf.errors.InvalidArgumentError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = served
        response.model_spec.signature_name = SIGNATURE
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        version = request.model_spec.version.value if request.model_spec.HasField("version") else None
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "Metadata field signature_def is the only one supported")
        try:
            served, _ = self.models.get(request.model_spec.name, version)
        except NotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = served
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in self.models.meta_graph(request.model_spec.name).signature_def.items():
            sig_map.signature_def[key].CopyFrom(sig)
        response.metadata["signature_def"].Pack(sig_map)
        return response


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, models: ServedModels):
        self.models = models

    def GetModelStatus(self, request, context):
        version = request.model_spec.version.value if request.model_spec.HasField("version") else None
        try:
            served, _ = self.models.get(request.model_spec.name, version)
        except NotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = served
        status.state = AVAILABLE
        return response


# TF Serving's REST paths (api_rest.md): status, metadata and :predict, each with
# an optional /versions/{v} or /labels/{l}.
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                        r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                        r"(?P<tail>/metadata|:predict)?$")


class BadRequest(Exception):
    pass


def _string_value(value) -> bytes:
    """A DT_STRING value: {"b64": ...} for binary data, else a UTF-8 string."""
    if isinstance(value, dict) and list(value) == ["b64"]:
        return base64.b64decode(value["b64"], validate=True)
    if isinstance(value, str):
        return value.encode()
    raise BadRequest(f"expected a string or {{\"b64\": ...}} for a DT_STRING input, got {value!r:.40}")


def _request_images(request: dict) -> tuple[list[bytes], bool]:
    """The "images" input of a row ("instances") or columnar ("inputs") request."""
    if ("instances" in request) == ("inputs" in request):
        raise BadRequest("Missing 'inputs' or 'instances' key" if "instances" not in request
                         else "Not both 'instances' and 'inputs' may be given")
    if "instances" in request:
        rows = request["instances"]
        if not isinstance(rows, list):
            raise BadRequest("'instances' must be a list")
        named = [r["images"] if isinstance(r, dict) and "b64" not in r and list(r) == ["images"]
                 else r for r in rows]
        if any(isinstance(r, dict) and "b64" not in r for r in named):
            raise BadRequest("instances: the only named input is 'images'")
        return [_string_value(v) for v in named], False
    columns = request["inputs"]
    if isinstance(columns, dict) and "b64" not in columns:
        if list(columns) != ["images"]:
            raise BadRequest("inputs: the only named input is 'images'")
        columns = columns["images"]
    if not isinstance(columns, list):
        raise BadRequest("inputs: 'images' has shape [-1]")
    return [_string_value(v) for v in columns], True


def _json_value(name: str, value: np.ndarray):
    """A tensor in the documented JSON mapping (nested lists; DT_STRING as text,
    or {"b64": ...} when the output's name ends in "_bytes")."""
    if isinstance(value, np.ndarray) and value.ndim:
        return [_json_value(name, v) for v in value]
    item = value.item() if isinstance(value, np.generic | np.ndarray) and value.dtype != object \
        else value
    if isinstance(item, np.ndarray):
        item = item[()]
    if isinstance(item, bytes):
        return {"b64": base64.b64encode(item).decode()} if name.endswith("_bytes") else item.decode()
    if isinstance(value, np.floating):
        return float(str(value))  # the shortest text that reads back as this float32
    return item


def _rest_response(outputs: dict, count: int, columnar: bool) -> dict:
    encoded = {k: _json_value(k, v) for k, v in outputs.items()}
    if columnar:
        return {"outputs": encoded if len(encoded) > 1 else next(iter(encoded.values()))}
    if len(encoded) == 1:
        return {"predictions": next(iter(encoded.values()))}
    return {"predictions": [{k: v[i] for k, v in encoded.items()} for i in range(count)]}


def _rest_handler(models: ServedModels):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: dict) -> None:
            send_json(self, status, body)

        def _route(self):
            m = _REST_PATH.match(self.path)
            if not m:
                self._send(400, {"error": f"Malformed request: {self.command} {self.path}"})
                return None
            try:
                version = models.resolve(m["name"], m["version"], m["label"])
            except BadRequest as e:
                self._send(400, {"error": str(e)})
                return None
            return m["name"], version, m["tail"] or ""

        def do_GET(self):
            route = self._route()
            if route is None:
                return
            name, version, tail = route
            if tail == ":predict":
                self._send(400, {"error": f"Malformed request: GET {self.path}"})
                return
            try:
                served, obj = models.get(name, version)
            except NotFound as e:
                self._send(404, {"error": str(e)})
                return
            if tail == "/metadata":
                self._send(200, {"model_spec": {"name": name, "signature_name": "",
                                                "version": str(served)},
                                 "metadata": {"signature_def": models.signature_defs(name)}})
                return
            self._send(200, {"model_version_status": [{
                "version": str(served), "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""}}]})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            route = self._route()
            if route is None:
                return
            name, version, tail = route
            if tail != ":predict":
                self._send(400, {"error": f"Malformed request: POST {self.path}"})
                return
            try:
                request = json.loads(body)
                if not isinstance(request, dict):
                    raise BadRequest("the body must be a JSON object")
                signature = request.get("signature_name") or SIGNATURE
                if signature != SIGNATURE:
                    raise BadRequest(f'Serving signature name: "{signature}" not found in signature def')
                images, columnar = _request_images(request)
            except (ValueError, BadRequest) as e:
                self._send(400, {"error": f"JSON Parse error: {e}" if isinstance(e, ValueError) else str(e)})
                return
            try:
                _served, outputs = models.run(name, version, np.array(images, dtype=object))
            except NotFound as e:
                self._send(404, {"error": str(e)})
                return
            except tf.errors.InvalidArgumentError as e:
                self._send(400, {"error": e.message})
                return
            self._send(200, _rest_response(outputs, len(images), columnar))

    return Handler


class FakeTFServing:
    """Serve every model under ``model_root`` on a gRPC and a REST port (0 = free)."""

    def __init__(self, model_root: Path, host: str = "127.0.0.1", grpc_port: int = 0,
                 version_labels: dict[str, int] | None = None):
        self.models = ServedModels(model_root, version_labels)
        self.host = host
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(8))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self.models), self.grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self.models),
                                                                  self.grpc_server)
        self.grpc_port = self.grpc_server.add_insecure_port(f"{host}:{grpc_port}")
        self.rest_server = ThreadingHTTPServer((host, 0), _rest_handler(self.models))
        self.rest_server.daemon_threads = True
        self.rest_port = self.rest_server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    def start(self) -> FakeTFServing:
        self.grpc_server.start()
        self._thread = threading.Thread(target=self.rest_server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.grpc_server.stop(grace=None)
        self.rest_server.shutdown()
        self.rest_server.server_close()


def main(argv: list[str] | None = None) -> int:
    """Run it as a process with tensorflow_model_server's flag names, e.g.
    ``python -m tests.fakes.tfserving --port=8500 --rest_api_port=8501 --model_base_path=models``
    (every model folder under the base path is served)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--rest_api_port", type=int, default=8501)
    parser.add_argument("--model_base_path", type=Path, required=True,
                        help="folder holding <name>/<version>/ SavedModels")
    args = parser.parse_args(argv)
    server = FakeTFServing(args.model_base_path, grpc_port=args.port)
    server.rest_server.server_close()
    server.rest_server = ThreadingHTTPServer(("127.0.0.1", args.rest_api_port), _rest_handler(server.models))
    server.rest_port = args.rest_api_port
    server.start()
    print(f"serving {', '.join(server.models.models)} on gRPC {server.grpc_target} and "
          f"REST {server.rest_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
