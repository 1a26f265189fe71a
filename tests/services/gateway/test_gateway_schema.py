"""Schemathesis against the gateway's OpenAPI schema, served by uvicorn: no
input the schema allows (or breaks) may produce a 5xx, and TF Serving's routes
answer only with the statuses and bodies the schema documents. Bounded: a few
examples per operation, with and without a valid token."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from incept.fsutil import write_json_atomic
from tests.services.gateway.conftest import TOKEN


def test_no_server_errors(make_gateway, layout):
    layout.dataset("flowers").mkdir(parents=True)
    write_json_atomic(layout.dataset("flowers") / "dataset.json", {"class_names": ["a"], "counts": {}})
    gw = make_gateway()
    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    tried = []

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=6, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            for headers in ({"Authorization": f"Bearer {TOKEN}"}, {}):
                response = case.call(base_url=gw.url, headers=headers, timeout=30)
                tried.append((case.method, case.path, response.status_code))
                checks = [not_a_server_error]
                if case.path.startswith(("/v1/models/", "/v2")):  # protocols: documented answers only
                    checks += [status_code_conformance, content_type_conformance,
                               response_schema_conformance]
                case.validate_response(response, checks=checks)

        check()
    assert {path for _m, path, _s in tried} == {op.path for op in operations}
    assert all(status < 500 for _m, _p, status in tried)


def test_schema_is_complete(client):
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/datasets",
            "/v1/datasets/{name}", "/v1/models", "/v1/classify/{name}", "/healthz", "/readyz"} <= paths
    # TF Serving's REST API, every route of it.
    for verb in ("", ":predict", "/metadata"):
        for pin in ("", "/versions/{version}", "/labels/{label}"):
            assert f"/v1/models/{{name}}{pin}{verb}" in paths
    # The Open Inference Protocol's REST routes.
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/repository/index",
            "/v2/models/{name}", "/v2/models/{name}/versions/{version}", "/v2/models/{name}/ready",
            "/v2/models/{name}/versions/{version}/ready", "/v2/models/{name}/infer",
            "/v2/models/{name}/versions/{version}/infer"} <= paths
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    predict = spec["paths"]["/v1/models/{name}:predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"application/json"}
    assert {"200", "400", "404", "413", "503"} <= set(predict["responses"])
    assert set(predict["responses"]["400"]["content"]["application/json"]["schema"].values()) == {
        "#/components/schemas/TFServingError"}
    classify = spec["paths"]["/v1/classify/{name}"]["post"]
    assert set(classify["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"200", "400", "404", "413", "415", "422", "503"} <= set(classify["responses"])
