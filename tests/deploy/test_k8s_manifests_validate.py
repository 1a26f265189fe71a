"""Every overlay renders with `kubectl kustomize`, and every rendered object —
plus the trainer Job templates the gateway fills in, as filled in by the
gateway's own code — passes `kubernetes-validate --strict` for Kubernetes 1.32
and for the newest version the validator knows."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from deploy_support import OVERLAYS, REPO
from kubernetes_validate.utils import latest_version

from incept.settings import Settings
from services.gateway.launchers.kubernetes import build_job

VERSIONS = ("1.32.0", latest_version())


def validate_all(objects: list[dict], version: str) -> list[str]:
    problems = []
    for o in objects:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{o['kind']}/{o['metadata'].get('name')}: {e.message} at {list(e.path)}")
    return problems


def test_newest_known_version_is_newer_than_the_floor():
    assert tuple(int(p) for p in VERSIONS[1].split(".")) > (1, 32, 0)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_system(rendered, overlay):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in rendered[overlay]}
    for expected in [("Namespace", "incept"), ("PersistentVolumeClaim", "incept-data"),
                     ("StatefulSet", "redis"), ("Service", "redis"),
                     ("Deployment", "evaluator"), ("Deployment", "tfserving"), ("Service", "tfserving"),
                     ("Deployment", "gateway"), ("Service", "gateway"), ("Ingress", "gateway"),
                     ("HorizontalPodAutoscaler", "gateway"), ("PodDisruptionBudget", "gateway"),
                     ("Role", "incept-launcher"), ("RoleBinding", "incept-gateway-launcher"),
                     ("NetworkPolicy", "default-deny-all"), ("Service", "incept-trainer-workers")]:
        assert expected in kinds, expected
    # Everything namespaced lands in the project's namespace.
    for o in rendered[overlay]:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "incept", (o["kind"], o["metadata"]["name"])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_pass_strict_validation(rendered, overlay, version):
    assert validate_all(rendered[overlay], version) == []


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_templates_as_the_launcher_fills_them_pass_strict_validation(templates, overlay,
                                                                             version):
    filled = []
    for name, template in templates[overlay].items():
        job = build_job(template, "Flowers_run.1", image="incept-trainer:0.1.0")
        job["metadata"]["namespace"] = "incept"
        filled += [template, job]
        assert job["metadata"]["name"] == "incept-train-flowers-run-1", name
    assert validate_all(filled, version) == []


def test_validator_rejects_what_strict_mode_is_for(templates):
    """The check above can fail: a misspelt field is an error in strict mode."""
    job = yaml.safe_load(yaml.safe_dump(templates["gpu"]["job-template.yaml"]))
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    assert validate_all([job], VERSIONS[0])


def test_tfjob_example_pod_templates_validate_and_the_crd_is_reported_unvalidatable():
    """kubernetes-validate knows only built-in kinds: the TFJob itself cannot be
    checked here (no CRD schema), so its pod templates are, as PodTemplates."""
    doc = yaml.safe_load(Path(REPO / "k8s/examples/tfjob.yaml").read_text())
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)
    replicas = doc["spec"]["tfReplicaSpecs"]
    assert replicas
    for role, replica in replicas.items():
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate",
                        "metadata": {"name": f"tfjob-{role.lower()}", "namespace": "incept"},
                        "template": replica["template"]}
        for version in VERSIONS:
            assert validate_all([pod_template], version) == []
        containers = replica["template"]["spec"]["containers"]
        assert [c["name"] for c in containers] == ["tensorflow"]
        assert containers[0]["command"] == ["incept"]
        fields = {f"INCEPT_{name.upper()}" for name in Settings.model_fields}
        assert {e["name"] for e in containers[0]["env"] if e["name"].startswith("INCEPT_")} <= fields
