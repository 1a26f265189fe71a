"""docker-compose.yml (+ the CPU override) run for real with podman-compose, on
the images `make images` built (the TF Serving stand-in for tensorflow/serving,
Redis from Debian's redis-server), through `make compose-up`/`compose-down` and
the published ports only: a photo archive uploaded over HTTP is converted, the
tiny job (random initialisation: no base checkpoint is downloaded) trains in the
trainer container, the evaluator evaluates and exports onto the named volume,
the config sidecar lists the model, the stand-in loads it, and predictions
through the gateway (backend grpc) and on TF Serving's REST and gRPC ports agree.
Every service's health check passes; after down and up, the job, its
evaluations and the served model are still there."""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass

import grpc
import httpx
import pytest
from podman_support import (
    free_port,
    make,
    podman,
    require_images,
    upload_and_convert,
    wait_for,
)

from incept.client import GatewayClient, GatewayError

pytestmark = pytest.mark.timeout(3600)
DATASET = "shapes"
SPEC = {  # the tiny net from random initialisation: minutes on a CPU
    "dataset": DATASET, "model_name": "tiny", "image_size": 32, "batch_size": 16,
    "max_steps": 120, "checkpoint_every_steps": 60, "optimizer": "adam", "learning_rate": 0.01,
    "opt_epsilon": 1e-3, "augment": False, "served_model_name": "shapes",
}


@dataclass
class ComposeStack:
    project: str
    variables: dict[str, str]
    gateway: str
    token: str
    rest: str
    grpc_target: str

    def client(self) -> GatewayClient:
        return GatewayClient(self.gateway, self.token, timeout_s=60.0)

    def containers(self) -> list[dict]:
        listed = podman("ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}",
                        "--format", "json").stdout
        return json.loads(listed or "[]")

    def logs(self) -> str:
        out = []
        for c in self.containers():
            name = c["Names"][0]
            tail = podman("logs", "--tail", "25", name, check=False)
            out.append(f"--- {name} ({c['State']}):\n{tail.stdout[-2500:]}{tail.stderr[-2500:]}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_images()
    root = tmp_path_factory.mktemp("compose")
    project = f"incept-test-{os.getpid()}"
    token = "compose-test-token-0123456789"
    ports = {name: str(free_port()) for name in
             ("GATEWAY_PORT", "TFSERVING_GRPC_PORT", "TFSERVING_REST_PORT", "TENSORBOARD_PORT")}
    env_file = root / ".env"
    env_file.write_text(f"INCEPT_API_TOKENS={token}\nINCEPT_PROTECT_PREDICT=false\n"
                        f"REDIS_PASSWORD={secrets.token_hex(24)}\n"
                        + "".join(f"{k}={v}\n" for k, v in ports.items()))
    variables = {"COMPOSE_ENV": str(env_file), "COMPOSE_PROJECT": project}
    s = ComposeStack(project, variables, f"http://127.0.0.1:{ports['GATEWAY_PORT']}", token,
                     f"http://127.0.0.1:{ports['TFSERVING_REST_PORT']}",
                     f"127.0.0.1:{ports['TFSERVING_GRPC_PORT']}")
    try:
        make("compose-up", **variables)
        yield s
    finally:
        make("compose-down", **variables)
        podman("volume", "rm", "-f", f"{project}_incept-data", f"{project}_redis-data", check=False)
        podman("network", "rm", "-f", f"{project}_default", check=False)


def healthy_gateway(s: ComposeStack) -> bool:
    try:
        return httpx.get(f"{s.gateway}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def predict_all_ways(s: ComposeStack, model: str, images: list[bytes]) -> dict[str, list[str]]:
    """Top class of each image through the gateway, TF Serving REST and gRPC."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with s.client() as client:
        by_gateway = [p["top"][0]["label"] for p in client.predict(model, images)["predictions"]]
    body = {"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}
    rest = httpx.post(f"{s.rest}/v1/models/{model}:predict", json=body, timeout=60).json()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    with grpc.insecure_channel(s.grpc_target) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    by_grpc = [row[0].decode() for row in tf.make_ndarray(reply.outputs["labels"])]
    return {"gateway": by_gateway, "rest": [p["labels"][0] for p in rest["predictions"]],
            "grpc": by_grpc}


def served(s: ComposeStack, model: str, images: list[bytes]) -> dict | None:
    try:
        return predict_all_ways(s, model, images)
    except (GatewayError, httpx.HTTPError, KeyError, grpc.RpcError):
        return None  # not loaded yet


def finished(job: dict) -> dict | None:
    """The job once it failed, or succeeded with its last checkpoint evaluated and a version exported."""
    if job["state"] == "failed":
        return job
    steps = [e["step"] for e in job.get("evaluations") or []]
    return job if job["state"] == "succeeded" and 120 in steps and job.get("exported_versions") else None


def run_the_job(s: ComposeStack, tmp_path) -> tuple[str, list[bytes], list[str]]:
    with s.client() as client:
        names = upload_and_convert(client, DATASET, tmp_path, "the trainer container", s.logs)
        job_id = client.submit(SPEC)["job_id"]
        job = wait_for("training, evaluation and an export", lambda: finished(client.job(job_id)),
                       on_timeout=s.logs)
    assert job["state"] == "succeeded", job
    assert 120 in [e["step"] for e in job["evaluations"]], job["evaluations"]
    images = [sorted((tmp_path / "photos" / n).iterdir())[0].read_bytes() for n in names]
    return job_id, images, names


def test_compose_stack_runs_the_job_and_survives_down_and_up(stack, tmp_path):
    wait_for("the gateway on its published port", lambda: healthy_gateway(stack), on_timeout=stack.logs)
    job_id, images, names = run_the_job(stack, tmp_path)
    config = wait_for("the config sidecar to list the model", lambda: (
        'name: "shapes"' in (text := podman("exec", f"{stack.project}_tfserving-config_1", "cat",
                                            "/data/serving/models.config").stdout) and text))
    assert 'base_path: "/data/models/shapes"' in config
    answers = wait_for("the stand-in to serve the export", lambda: served(stack, "shapes", images),
                       on_timeout=stack.logs)
    assert answers["gateway"] == answers["rest"] == answers["grpc"], answers
    assert set(answers["gateway"]) <= set(names)

    for c in stack.containers():
        if c["State"] == "running":
            check = podman("healthcheck", "run", c["Names"][0], check=False)
            assert check.returncode == 0, (c["Names"][0], check.stdout, check.stderr)
    assert {c["Labels"]["com.docker.compose.service"] for c in stack.containers()
            if c["State"] == "running"} == {"redis", "trainer", "evaluator", "tfserving-config",
                                             "tfserving", "gateway", "tensorboard"}

    make("compose-down", **stack.variables)
    assert stack.containers() == []
    make("compose-up", **stack.variables)
    wait_for("the gateway after up", lambda: healthy_gateway(stack), on_timeout=stack.logs)
    with stack.client() as client:
        job = client.job(job_id)
    assert job["state"] == "succeeded" and 120 in [e["step"] for e in job["evaluations"]]
    again = wait_for("the model served again", lambda: served(stack, "shapes", images),
                     on_timeout=stack.logs)
    assert again == answers
