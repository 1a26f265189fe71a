"""The Kubernetes launcher: Jobs built from the trainer template pass strict
validation against the Kubernetes 1.32 schema, and its API calls go through
the real ``kubernetes`` client to a local endpoint that records them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from incept.jobstate import JobState
from incept.queues import connect
from services.gateway.launchers.kubernetes import build_job, k8s_job_name
from tests.fakes.kubernetes_api import KubernetesApiRecorder
from tests.services.gateway.conftest import TOKEN

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "k8s" / "base" / "trainer" / "job-template.yaml"
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _validate(tmp_path: Path, job: dict) -> subprocess.CompletedProcess:
    path = tmp_path / f"{job['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(job))
    exe = Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run([str(exe), "--strict", "-k", "1.32.0", str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("job_id", ["flowers-20260101-000000-abc123", "My_Data.v2-20260101-1",
                                    "x" * 64])
def test_built_jobs_pass_strict_validation(tmp_path, job_id):
    template = yaml.safe_load(TEMPLATE.read_text())
    job = build_job(template, job_id, image="registry.example/incept-trainer:1")
    name = job["metadata"]["name"]
    assert DNS_1123.match(name) and len(name) <= 63 and name.startswith("incept-train-")
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert meta["labels"]["app.kubernetes.io/name"] == "incept-trainer"
        assert meta["labels"]["incept.dev/job-id"] == job_id[:63]
    (trainer,) = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "trainer"]
    assert trainer["command"] == ["incept"] and trainer["args"] == ["train", "--job-id", job_id]
    assert trainer["image"] == "registry.example/incept-trainer:1"
    # What the template brings stays: GPU, node selector, tolerations, the shared volume.
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["template"]["spec"]["tolerations"]
    assert any(v.get("persistentVolumeClaim") for v in job["spec"]["template"]["spec"]["volumes"])
    result = _validate(tmp_path, job)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_catches_a_broken_job(tmp_path):
    job = build_job(yaml.safe_load(TEMPLATE.read_text()), "abc")
    job["spec"]["template"]["spec"]["containers"][0]["argz"] = ["oops"]
    assert _validate(tmp_path, job).returncode != 0


@pytest.fixture
def k8s_api(tmp_path):
    recorder = KubernetesApiRecorder()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "local", "cluster": {"server": recorder.url}}],
        "users": [{"name": "gateway", "user": {"token": "k8s-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "local", "user": "gateway"}}],
    }))
    yield recorder, kubeconfig
    recorder.stop()


def test_launch_status_cancel_through_the_kubernetes_client(make_gateway, k8s_api, layout, redis_url):
    recorder, kubeconfig = k8s_api
    layout.dataset("flowers").mkdir(parents=True)
    gw = make_gateway(launcher="kubernetes", k8s_kubeconfig=kubeconfig, k8s_job_template=TEMPLATE,
                      k8s_namespace="incept-test", trainer_image="incept-trainer:test")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        r = c.post("/v1/jobs", json={"dataset": "flowers", "model_name": "tiny", "max_steps": 3},
                   headers=auth)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert layout.run(job_id).spec.exists()
        (create,) = recorder.requests
        assert create["method"] == "POST"
        assert create["path"] == "/apis/batch/v1/namespaces/incept-test/jobs"
        assert create["authorization"] == "Bearer k8s-token"
        expected = build_job(yaml.safe_load(TEMPLATE.read_text()), job_id, image="incept-trainer:test")
        assert create["body"] == expected

        job = c.get(f"/v1/jobs/{job_id}", headers=auth).json()
        assert job["launcher"]["k8s_job"] == k8s_job_name(job_id)
        assert job["launcher"]["active"] == 1
        assert recorder.requests[-1]["path"] == \
            f"/apis/batch/v1/namespaces/incept-test/jobs/{k8s_job_name(job_id)}/status"

        r = c.delete(f"/v1/jobs/{job_id}", headers=auth)
        assert r.status_code == 202 and r.json()["state"] == "cancelling"
        delete = next(q for q in recorder.requests if q["method"] == "DELETE")
        assert delete["path"].split("?")[0] == f"/apis/batch/v1/namespaces/incept-test/jobs/{k8s_job_name(job_id)}"
        assert "propagationPolicy=Background" in delete["path"]
        assert JobState(connect(redis_url)).cancel_requested(job_id)


def test_kubernetes_api_down_gives_503(make_gateway, k8s_api, layout, redis_url):
    recorder, kubeconfig = k8s_api
    recorder.stop()
    layout.dataset("flowers").mkdir(parents=True)
    gw = make_gateway(launcher="kubernetes", k8s_kubeconfig=kubeconfig, k8s_job_template=TEMPLATE)
    with httpx.Client(base_url=gw.url, timeout=120) as c:
        r = c.post("/v1/jobs", json={"dataset": "flowers", "model_name": "tiny", "max_steps": 3},
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 503 and r.headers["retry-after"], r.text
    # The submission did not happen: nothing on the volume or in Redis, so a retry starts clean.
    assert list(layout.runs.iterdir()) == []
    assert JobState(connect(redis_url)).list_ids() == []


def test_missing_template_keeps_the_api_up(make_gateway, tmp_path, layout):
    layout.dataset("flowers").mkdir(parents=True)
    gw = make_gateway(launcher="kubernetes", k8s_job_template=tmp_path / "nope.yaml")
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/jobs", json={"dataset": "flowers", "model_name": "tiny", "max_steps": 3},
                   headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 503 and "nope.yaml" in r.json()["detail"]
