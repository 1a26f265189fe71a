"""The Kubernetes dev overlay's workloads run (k8s_podman.py: each pod's
containers started from the locally built images exactly as the rendered
manifests say, Service names resolving on one network), their readiness and
liveness probes pass, and the job path works with INCEPT_LAUNCHER=kubernetes:
an uploaded archive is converted by the converter Deployment, the gateway's
launcher posts the trainer Job to a local endpoint speaking the API server's
protocol (the same double the gateway tests use), that Job's pod template runs
as a container and trains, the evaluator exports, the TF Serving stand-in
serves it, and the gateway predicts through it over gRPC.

What a cluster adds and this cannot run: the scheduler, RBAC enforcement,
NetworkPolicies, GPUs, restarts and rollouts (checked statically elsewhere in
tests/deploy)."""

from __future__ import annotations

import os
import secrets

import httpx
import pytest
import yaml
from k8s_podman import Cluster
from podman_support import podman, require_images, upload_and_convert, wait_for

from incept.client import GatewayClient, GatewayError
from tests.fakes.kubernetes_api import KubernetesApiRecorder

pytestmark = pytest.mark.timeout(3600)
TOKEN = "k8s-test-token-0123456789"
DATASET = "shapes"
SPEC = {"dataset": DATASET, "model_name": "tiny", "image_size": 32, "batch_size": 16,
        "max_steps": 60, "checkpoint_every_steps": 60, "optimizer": "adam", "learning_rate": 0.01,
        "opt_epsilon": 1e-3, "augment": False, "served_model_name": "shapes"}
# Start order: what others connect to first (a kubelet would start them all and
# let restarts sort it out; here nothing restarts).
ORDER = ("redis", "tfserving", "evaluator", "converter", "gateway")


@pytest.fixture(scope="module")
def cluster(rendered, tmp_path_factory):
    require_images()
    work = tmp_path_factory.mktemp("k8s")
    objects = rendered["dev"]
    prefix = f"incept-k8s-{os.getpid()}"
    api = KubernetesApiRecorder(host="0.0.0.0")  # noqa: S104 (the pods reach it over the bridge)
    kube = work / "kube"
    kube.mkdir()
    c = Cluster(prefix, objects, work, secrets={"incept-gateway-tokens": {"tokens": TOKEN + "\n"},
                                               "incept-redis": {"password": secrets.token_hex(24)}},
                # In place of the in-cluster service account: a kubeconfig for the API double.
                extra_env={"gateway": {"INCEPT_K8S_KUBECONFIG": "/etc/incept/kube/config"}},
                extra_args={"gateway": ["--mount", f"type=bind,source={kube},destination=/etc/incept/kube,ro"]})
    try:
        host = c.create_network()
        (kube / "config").write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "local", "cluster": {"server": f"http://{host}:{api.port}"}}],
            "users": [{"name": "gateway", "user": {"token": "k8s-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "local", "user": "gateway"}}]}))
        (kube / "config").chmod(0o644)
        kube.chmod(0o755)
        workloads = {name: template for name, template in c.workloads()}
        assert set(workloads) == set(ORDER), sorted(workloads)
        claims = {o["metadata"]["name"]: o["spec"].get("volumeClaimTemplates", []) for o in objects
                  if o["kind"] == "StatefulSet"}
        for name in ORDER:
            c.start_pod(name, workloads[name], claims=claims.get(name))
        yield c, api
    finally:
        c.remove()
        api.stop()


def all_pass(c: Cluster, kind: str) -> dict | None:
    results = {pod: c.probes(p, kind) for pod, p in c.pods.items()}
    return None if any(r for probes in results.values() for r in probes.values()) else results


def test_dev_workloads_pass_their_readiness_and_liveness_probes(cluster):
    c, _ = cluster
    wait_for("every readiness probe", lambda: all_pass(c, "readinessProbe"),
             on_timeout=lambda: f"{ {p: c.probes(pod, 'readinessProbe') for p, pod in c.pods.items()} }\n"
                                + c.logs())
    assert all_pass(c, "livenessProbe") is not None, {p: c.probes(pod, "livenessProbe")
                                                      for p, pod in c.pods.items()}


def test_the_job_path_with_the_kubernetes_launcher(cluster, tmp_path):
    c, api = cluster
    gateway = f"http://{c.address(c.pods['gateway'])}:8000"
    with GatewayClient(gateway, TOKEN, timeout_s=60.0) as client:
        wait_for("the gateway", lambda: client.healthy(), on_timeout=c.logs)
        names = upload_and_convert(client, DATASET, tmp_path, "the converter Deployment", c.logs)
        job_id = client.submit(SPEC)["job_id"]
        posted = wait_for("the launcher's Job", lambda: list(api.jobs.values()), on_timeout=c.logs)
        (job,) = posted
        pod = c.start_pod(job["metadata"]["name"], job["spec"]["template"])
        exit_code = podman("wait", pod.infra, timeout=3000).stdout.strip()
        assert exit_code == "0", c.logs()
        done = wait_for("the evaluation and export", lambda: (
            (j := client.job(job_id)).get("exported_versions") and j), on_timeout=c.logs)
        assert done["state"] == "succeeded", done
        images = [sorted((tmp_path / "photos" / n).iterdir())[0].read_bytes() for n in names]
        answer = wait_for("the stand-in to serve the export", lambda: predicted(client, images),
                          on_timeout=c.logs)
    assert len(answer["predictions"]) == len(names)
    assert {p["top"][0]["label"] for p in answer["predictions"]} <= set(names)
    request = next(r for r in api.requests if r["method"] == "POST")
    assert request["path"] == "/apis/batch/v1/namespaces/incept/jobs"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["train", "--job-id", job_id]


def predicted(client: GatewayClient, images: list[bytes]) -> dict | None:
    try:
        return client.predict("shapes", images)
    except (GatewayError, httpx.HTTPError):
        return None
