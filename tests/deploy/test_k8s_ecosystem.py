"""The manifests for clusters that run KServe and the Prometheus Operator,
validated against those projects' CRD schemas (pinned copies, k8s/schemas/),
and tied to the objects they point at in k8s/base."""

from __future__ import annotations

import copy
import gzip
import json
import re

import jsonschema
import pytest
import yaml
from deploy_support import REPO, read_lock

SCHEMAS = REPO / "k8s/schemas"


def _schema(name: str) -> dict:
    path = SCHEMAS / name
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(raw)


def _errors(schema: dict, doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]


def _base(kind: str, name: str) -> dict:
    for path in sorted((REPO / "k8s/base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in k8s/base")


@pytest.fixture(scope="module")
def inference_service() -> dict:
    return yaml.safe_load((REPO / "k8s/examples/kserve-inferenceservice.yaml").read_text())


@pytest.fixture(scope="module")
def service_monitor() -> dict:
    return yaml.safe_load((REPO / "k8s/observability/servicemonitor.yaml").read_text())


def test_the_inference_service_matches_kserves_crd(inference_service):
    schema = _schema("serving.kserve.io_inferenceservice_v1beta1.json.gz")
    assert _errors(schema, inference_service) == []
    # The schema is strict: a misspelt field is caught, as the API server would refuse it.
    broken = copy.deepcopy(inference_service)
    broken["spec"]["predictor"]["tensorflow"]["storageURI"] = "pvc://x"
    assert _errors(schema, broken)


def test_the_inference_service_serves_the_shared_volume_with_the_locked_tf_serving(inference_service):
    predictor = inference_service["spec"]["predictor"]["tensorflow"]
    claim, _, path = predictor["storageUri"].removeprefix("pvc://").partition("/")
    assert _base("PersistentVolumeClaim", claim)  # the volume the evaluator exports onto
    assert re.fullmatch(r"models/[A-Za-z0-9][A-Za-z0-9_.-]*", path)  # layout.model(<name>)
    assert predictor["runtimeVersion"] == read_lock()["tensorflow-cpu"]
    namespace = yaml.safe_load((REPO / "k8s/base/kustomization.yaml").read_text())["namespace"]
    assert inference_service["metadata"]["namespace"] == namespace


def test_the_service_monitor_matches_the_prometheus_operators_crd(service_monitor):
    schema = _schema("monitoring.coreos.com_servicemonitor_v1.json")
    assert _errors(schema, service_monitor) == []
    broken = copy.deepcopy(service_monitor)
    broken["spec"]["endpoints"][0]["interval"] = "every minute"
    assert _errors(schema, broken)


def test_the_service_monitor_scrapes_the_gateways_metrics_port(service_monitor):
    service = _base("Service", "gateway")
    selector = service_monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in service_monitor["spec"]["endpoints"]} <= ports
    assert {e["path"] for e in service_monitor["spec"]["endpoints"]} == {"/metrics"}
    namespace = yaml.safe_load((REPO / "k8s/base/kustomization.yaml").read_text())["namespace"]
    assert service_monitor["spec"]["namespaceSelector"]["matchNames"] == [namespace]
    assert service_monitor["metadata"]["namespace"] == namespace


def test_the_pinned_schemas_name_their_source():
    source = (SCHEMAS / "SOURCE.md").read_text()
    for path in SCHEMAS.iterdir():
        if path.name != "SOURCE.md":
            assert f"`{path.name}`" in source, path.name
    assert re.search(r"commit `[0-9a-f]{40}`", source)
