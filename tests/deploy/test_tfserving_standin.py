"""docker/tfserving_standin.py, the TF Serving stand-in image's
`tensorflow_model_server`, as a process: the stock server's flags as compose
and the manifests pass them, the model config written by incept-tfserving-config
followed as TF Serving follows it (a config that appears late, a new model, a
new version, a model dropped), predictions over REST and gRPC from the real
exported SavedModel. (The image itself runs in test_compose_run.py.)"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from deploy_support import REPO
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from incept.redis_server import free_port

STANDIN = REPO / "docker/tfserving_standin.py"
CONFIG_WRITER = REPO / "docker/tfserving_models.py"
CLASSES = ["daisy", "roses", "tulips"]


def export_tiny(base, version: int) -> None:
    """A real incept export of the tiny net at models/<name>/<version>."""
    import keras

    from incept import nets
    from incept.export import export_model

    keras.utils.set_random_seed(version)
    model = nets.build("tiny", num_classes=len(CLASSES), image_size=32)
    export_model(model, CLASSES, base, image_size=32)
    assert (base / str(version)).is_dir(), sorted(p.name for p in base.iterdir())


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write_config(data_root) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCEPT_")}
    done = subprocess.run([sys.executable, str(CONFIG_WRITER), "write"], capture_output=True,
                          text=True, timeout=120, env={**env, "INCEPT_DATA_ROOT": str(data_root)})
    assert done.returncode == 0, done.stderr


def wait_for(predicate, proc, what: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the stand-in exited before {what}: {proc.stdout.read()}"
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def status(rest: str, name: str) -> dict | None:
    try:
        r = httpx.get(f"{rest}/v1/models/{name}", timeout=5)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else {"missing": r.status_code}


@pytest.fixture
def standin(tmp_path):
    grpc_port, rest_port = free_port(), free_port()
    argv = [sys.executable, str(STANDIN), f"--port={grpc_port}", f"--rest_api_port={rest_port}",
            f"--model_config_file={tmp_path}/serving/models.config",
            "--model_config_file_poll_wait_seconds=1", "--file_system_poll_wait_seconds=1",
            "--enable_batching=true",
            f"--batching_parameters_file={REPO}/docker/tfserving/batching.config"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc, tmp_path, f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_standin_follows_the_model_config_and_new_versions(standin):
    proc, root, rest, target = standin
    # Up before the sidecar wrote a config; nothing is served yet.
    assert wait_for(lambda: status(rest, "flowers"), proc, "the REST port") == {"missing": 404}
    export_tiny(root / "models/flowers", 1)
    write_config(root)
    wait_for(lambda: (status(rest, "flowers") or {}).get("model_version_status"), proc,
             "version 1 to load")
    image = jpeg(0)
    body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
    by_rest = httpx.post(f"{rest}/v1/models/flowers:predict", json=body, timeout=30).json()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "flowers"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
    with grpc.insecure_channel(target) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert reply.model_spec.version.value == 1
    by_grpc = [label.decode() for label in tf.make_ndarray(reply.outputs["labels"])[0]]
    assert by_grpc == by_rest["predictions"][0]["labels"]
    assert set(by_grpc) <= set(CLASSES)
    # A new version (exported beside, then renamed in, as the evaluator does) replaces it.
    export_tiny(root / "models/flowers", 2)
    wait_for(lambda: status(rest, "flowers")["model_version_status"][0]["version"] == "2", proc,
             "version 2 to replace version 1")
    # A model that leaves the config is unloaded.
    shutil.rmtree(root / "models/flowers")
    write_config(root)
    wait_for(lambda: status(rest, "flowers") == {"missing": 404}, proc, "the model to unload")


def test_standin_refuses_what_tensorflow_model_server_refuses(tmp_path):
    bad = subprocess.run([sys.executable, str(STANDIN), "--port=1", "--no_such_flag=1"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=120)
    assert bad.returncode == 2 and "--no_such_flag" in bad.stderr
    (tmp_path / "batching.config").write_text("this is not a batching config\n")
    bad = subprocess.run([sys.executable, str(STANDIN), "--model_base_path=/nonexistent",
                          f"--batching_parameters_file={tmp_path}/batching.config"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=120)
    assert bad.returncode == 2 and "no BatchingParameters fields" in bad.stderr
