"""A TensorFlow Serving test double (TF Serving has no pip or apt package here).

It speaks TF Serving's own protocols, built from tensorflow-serving-api:
gRPC ``tensorflow.serving.PredictionService/Predict`` and
``ModelService/GetModelStatus``, and REST ``GET /v1/models/{name}[/versions/{v}]``
and ``POST /v1/models/{name}[/versions/{v}]:predict`` (row format), and answers
by running the real exported SavedModel (the newest version under
``<model_root>/<name>/``) with ``tf.saved_model.load``, as TF Serving does."""

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
from tensorflow_serving.apis import (
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
    def __init__(self, model_root: Path):
        self.models: dict[str, tuple[int, object]] = {}
        for model_dir in sorted(Path(model_root).iterdir()):
            versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
            if versions:
                loaded = tf.saved_model.load(str(model_dir / str(versions[-1])))
                self.models[model_dir.name] = (versions[-1], loaded)
        self.lock = threading.Lock()

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


_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<verb>:predict)?$")


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
                self._send(404, {"error": f"Malformed request: {self.command} {self.path}"})
                return None
            return m["name"], (int(m["version"]) if m["version"] else None), bool(m["verb"])

        def do_GET(self):
            route = self._route()
            if route is None:
                return
            name, version, verb = route
            if verb:
                self._send(404, {"error": "Malformed request: GET on :predict"})
                return
            try:
                served, _ = models.get(name, version)
            except NotFound as e:
                self._send(404, {"error": str(e)})
                return
            self._send(200, {"model_version_status": [{
                "version": str(served), "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""}}]})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            route = self._route()
            if route is None:
                return
            name, version, verb = route
            if not verb:
                self._send(404, {"error": "Malformed request: POST without :predict"})
                return
            try:
                request = json.loads(body)
                instances = request["instances"]
                images = [base64.b64decode((inst.get("images", inst))["b64"]) for inst in instances]
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                self._send(400, {"error": f"JSON Parse error: {e}"})
                return
            try:
                _served, outputs = models.run(name, version, np.array(images, dtype=object))
            except NotFound as e:
                self._send(404, {"error": str(e)})
                return
            except tf.errors.InvalidArgumentError as e:
                self._send(400, {"error": e.message})
                return
            rows = []
            for i in range(len(images)):
                row = {}
                for key, value in outputs.items():
                    v = value[i]
                    if v.dtype == object:
                        v = np.vectorize(lambda b: b.decode())(v) if v.ndim else v.decode()
                    row[key] = v.tolist()
                rows.append(row)
            self._send(200, {"predictions": rows})

    return Handler


class FakeTFServing:
    """Serve every model under ``model_root`` on a gRPC and a REST port (0 = free)."""

    def __init__(self, model_root: Path, host: str = "127.0.0.1", grpc_port: int = 0):
        self.models = ServedModels(model_root)
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
