#!/usr/bin/env python
"""incept's TensorFlow Serving stand-in: NOT TensorFlow Serving.

No TF Serving binary or image can be had where incept is tested, so the image
``localhost/incept-tfserving-standin`` installs this as ``tensorflow_model_server``
and runs the project's TF Serving protocol double (``tests/fakes/tfserving.py``:
gRPC ``PredictionService``/``ModelService`` and the REST API, answered by the
real exported SavedModels) behind the stock server's command line, so that
docker-compose.yml and the Kubernetes manifests run unchanged:

    --port, --rest_api_port                  gRPC and REST ports (0.0.0.0)
    --model_config_file                      a ModelServerConfig text proto (what
                                             incept-tfserving-config writes), re-read every
    --model_config_file_poll_wait_seconds    seconds (0: read once), as TF Serving does
    --file_system_poll_wait_seconds          how often base paths are scanned for new versions
    --model_name, --model_base_path          the single-model form instead of a config file
    --enable_batching, --batching_parameters_file
                                             accepted; the file must be readable and in
                                             BatchingParameters' text form (its proto is not in
                                             tensorflow-serving-api); requests run one at a time

Versions: the newest integer version under each base path is served
(``latest { num_versions: 1 }``, the config incept writes); a new version
replaces it, a model dropped from the config is unloaded. Unlike TF Serving, a
config file that does not exist yet is waited for (the sidecar writes it)."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import tempfile
import threading
import time
from concurrent import futures
from http.server import ThreadingHTTPServer
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tests.fakes.tfserving import ServedModels, _ModelService, _PredictionService, _rest_handler

BANNER = "incept TF Serving stand-in (tests/fakes/tfserving.py; not TensorFlow Serving)"


class ConfiguredModels(ServedModels):
    """ServedModels that follow a model config and new versions on disk."""

    def __init__(self):
        with tempfile.TemporaryDirectory() as empty:  # the parent loads a folder: start empty
            super().__init__(Path(empty))
        self.base_paths: dict[str, Path] = {}

    def configure(self, base_paths: dict[str, Path]) -> None:
        self.base_paths = dict(base_paths)
        for name in set(self.models) - set(base_paths):
            self.models.pop(name, None)
            self.paths.pop(name, None)
            log(f"unloaded model {name} (no longer in the config)")

    def refresh(self) -> None:
        for name, base in self.base_paths.items():
            versions = sorted(int(p.name) for p in _listdir(base) if p.name.isdigit() and p.is_dir())
            if not versions or self.models.get(name, (None,))[0] == versions[-1]:
                continue
            try:
                loaded = tf.saved_model.load(str(base / str(versions[-1])))
            except (OSError, ValueError, tf.errors.OpError) as e:
                log(f"cannot load {name} version {versions[-1]}: {e}")
                continue
            self.paths[name] = base / str(versions[-1])
            self.models[name] = (versions[-1], loaded)
            log(f"model {name}: version {versions[-1]} AVAILABLE")


def _listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def read_config(path: Path) -> dict[str, Path] | None:
    """name -> base path of a ModelServerConfig file; None if it is not there yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return {m.name: Path(m.base_path) for m in config.model_config_list.config}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tensorflow_model_server", description=BANNER)
    p.add_argument("--port", type=int, default=8500)
    p.add_argument("--rest_api_port", type=int, default=0)
    p.add_argument("--model_config_file", type=Path)
    p.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0)
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", type=Path)
    p.add_argument("--enable_batching", default="false", choices=["true", "false"])
    p.add_argument("--batching_parameters_file", type=Path)
    args = p.parse_args(argv)
    if (args.model_config_file is None) == (args.model_base_path is None):
        p.error("give --model_config_file or --model_base_path (and --model_name)")
    if args.batching_parameters_file is not None:
        text = args.batching_parameters_file.read_text()
        fields = dict(re.findall(r"^\s*(\w+)\s*\{\s*value:\s*([^\s}]+)\s*\}", text, re.M))
        if not fields:
            p.error(f"{args.batching_parameters_file}: no BatchingParameters fields")
        log(f"batching parameters (accepted, not applied): {fields}")
    return args


def serve(models: ConfiguredModels, port: int, rest_port: int):
    server = grpc.server(futures.ThreadPoolExecutor(8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(models),
                                                                       server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(models), server)
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    rest = None
    if rest_port:
        rest = ThreadingHTTPServer(("0.0.0.0", rest_port), _rest_handler(models))  # noqa: S104
        rest.daemon_threads = True
        threading.Thread(target=rest.serve_forever, daemon=True).start()
    log(f"{BANNER}: gRPC on 0.0.0.0:{port}" + (f", REST on 0.0.0.0:{rest_port}" if rest else ""))
    return server, rest


def follow(args: argparse.Namespace, models: ConfiguredModels, stop: threading.Event) -> None:
    """Re-read the config and rescan the versions until stopped."""
    next_config = 0.0
    while not stop.is_set():
        if args.model_config_file is not None and time.monotonic() >= next_config:
            try:
                entries = read_config(args.model_config_file)
            except text_format.ParseError as e:
                log(f"ignoring an invalid {args.model_config_file}: {e}")
                entries = None
            if entries is not None:
                models.configure(entries)
                if args.model_config_file_poll_wait_seconds <= 0:
                    next_config = float("inf")
            if args.model_config_file_poll_wait_seconds > 0 or entries is None:
                next_config = time.monotonic() + max(args.model_config_file_poll_wait_seconds, 1.0)
        models.refresh()
        stop.wait(max(args.file_system_poll_wait_seconds, 0.2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = ConfiguredModels()
    if args.model_base_path is not None:
        models.configure({args.model_name: args.model_base_path})
    server, rest = serve(models, args.port, args.rest_api_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    follow(args, models, stop)
    server.stop(grace=None)
    if rest is not None:
        rest.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
