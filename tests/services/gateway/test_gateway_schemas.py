"""GET /v1/schemas/job: the job spec's JSON schema and the presets the page's
new-job form is built from."""

from __future__ import annotations


def test_job_schema_and_presets_for_forms(client):
    from incept.presets import PRESETS
    from incept.spec import JobSpec

    r = client.get("/v1/schemas/job")
    assert r.status_code == 200
    body = r.json()
    assert body["schema"] == JobSpec.model_json_schema()
    assert body["schema"]["required"] == ["dataset"]
    assert set(body["presets"]) == set(PRESETS) == {"seed", "full", "tiny"}
