"""A Kubernetes ``batch/v1`` Job per training job, built from the trainer
template in ``k8s/`` (GPU resources, node selector, tolerations and the shared
volume come from the template; this fills in name, labels and args), created,
read back and deleted through the official ``kubernetes`` client."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml

from incept.errors import UserError
from services.gateway.errors import BackendUnavailable
from services.gateway.launchers.base import Launcher

APP_LABEL = "app.kubernetes.io/name"
APP_NAME = "incept-trainer"
JOB_ID_LABEL = "incept.dev/job-id"
CONTAINER = "trainer"


def k8s_job_name(job_id: str) -> str:
    """``incept-train-<id>`` as a DNS-1123 name (lowercase, [a-z0-9-], <= 63 chars)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    return f"incept-train-{slug}"[:63].rstrip("-")


def label_value(job_id: str) -> str:
    """Label values allow [A-Za-z0-9_.-], <= 63, alphanumeric at both ends: NAME_RE ids fit."""
    return job_id[:63].rstrip("_.-")


def build_job(template: dict, job_id: str, *, image: str | None = None) -> dict:
    job = copy.deepcopy(template)
    if job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
        raise UserError("the trainer template is not a batch/v1 Job")
    labels = {APP_LABEL: APP_NAME, JOB_ID_LABEL: label_value(job_id)}
    meta = job.setdefault("metadata", {})
    meta["name"] = k8s_job_name(job_id)
    meta.pop("generateName", None)
    meta.setdefault("labels", {}).update(labels)
    meta.setdefault("annotations", {})["incept.dev/job-id"] = job_id
    pod = job["spec"]["template"]
    pod.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    containers = pod["spec"]["containers"]
    trainer = next((c for c in containers if c.get("name") == CONTAINER), None)
    if trainer is None:
        raise UserError(f"the trainer template has no container named {CONTAINER!r}")
    trainer["command"] = ["incept"]
    trainer["args"] = ["train", "--job-id", job_id]
    if image:
        trainer["image"] = image
    _pin_image_and_bounds(job, trainer["image"])
    return job


# A trainer Job's lifetime when the template names none (the admission policy in
# k8s/cluster refuses a Job without them).
ACTIVE_DEADLINE_S = 7 * 24 * 3600
TTL_AFTER_FINISHED_S = 24 * 3600


def _pin_image_and_bounds(job: dict, image: str) -> None:
    """Every container of the pod runs the trainer image (the template cannot
    smuggle in another one), and the Job ends and is cleaned up in bounded time."""
    pod = job["spec"]["template"]["spec"]
    for group in ("initContainers", "containers"):
        for container in pod.get(group) or []:
            if container.get("image") != image:
                raise UserError(f"the trainer template's container {container.get('name')!r} "
                                f"runs {container.get('image')!r}, not the trainer image {image!r}")
    spec = job["spec"]
    spec["activeDeadlineSeconds"] = min(int(spec.get("activeDeadlineSeconds") or ACTIVE_DEADLINE_S),
                                        ACTIVE_DEADLINE_S)
    spec.setdefault("ttlSecondsAfterFinished", TTL_AFTER_FINISHED_S)


class KubernetesLauncher(Launcher):
    name = "kubernetes"

    def __init__(self, template_path: Path, namespace: str, *, image: str | None = None,
                 kubeconfig: Path | None = None, api_client=None):
        self.template_path = Path(template_path)
        self.namespace = namespace
        self.image = image
        self.template = self._read_template()
        if api_client is None:
            api_client = self._api_client(kubeconfig)
        from kubernetes import client

        self.batch = client.BatchV1Api(api_client)

    def _read_template(self) -> dict:
        try:
            data = yaml.safe_load(self.template_path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"cannot read the trainer Job template {self.template_path}: {e}") from None
        if not isinstance(data, dict):
            raise UserError(f"{self.template_path} is not a Kubernetes object")
        return data

    @staticmethod
    def _api_client(kubeconfig: Path | None):
        from kubernetes import config
        from kubernetes.client import ApiClient, Configuration

        cfg = Configuration()
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None,
                                    client_configuration=cfg)
        return ApiClient(cfg)

    def build(self, job_id: str) -> dict:
        return build_job(self.template, job_id, image=self.image)

    def _call(self, fn, *args, **kw):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kw)
        except ApiException as e:
            if e.status == 404:
                return None
            raise BackendUnavailable(f"the Kubernetes API refused the request ({e.status} {e.reason})") from None
        except HTTPError as e:
            raise BackendUnavailable(f"the Kubernetes API did not answer ({type(e).__name__})") from None

    def launch(self, job_id: str) -> str:
        body = self.build(job_id)
        self._call(self.batch.create_namespaced_job, self.namespace, body)
        return body["metadata"]["name"]

    def cancel(self, job_id: str) -> bool:
        # Background propagation: the pod gets SIGTERM and its grace period, in
        # which the trainer writes a final checkpoint.
        self._call(self.batch.delete_namespaced_job, k8s_job_name(job_id), self.namespace,
                   propagation_policy="Background")
        return False

    def status(self, job_id: str) -> dict | None:
        job = self._call(self.batch.read_namespaced_job_status, k8s_job_name(job_id), self.namespace)
        if job is None:
            return None
        st = job.status
        conditions = [c.type for c in (st.conditions or []) if c.status == "True"]
        return {"launcher": self.name, "k8s_job": job.metadata.name, "active": st.active or 0,
                "succeeded": st.succeeded or 0, "failed": st.failed or 0, "conditions": conditions}
