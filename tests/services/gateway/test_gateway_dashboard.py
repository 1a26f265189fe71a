"""The Grafana dashboard (k8s/observability/grafana-dashboard.json) parses, and
every metric and label its queries name is one a live gateway exports, after
real traffic: predictions on each protocol, an error, a job and an evaluation."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from incept.fsutil import write_json_atomic

DASHBOARD = Path(__file__).resolve().parents[3] / "k8s/observability/grafana-dashboard.json"


def _queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_every_metric_the_dashboard_names_is_exported(make_gateway, layout, redis_url, images):
    import httpx
    import redis

    from incept.jobstate import JobState

    JobState(redis.Redis.from_url(redis_url)).create("dash-job", dataset="flowers")
    write_json_atomic(layout.run("dash-job").eval_result(10), {"step": 10, "accuracy": 0.5})
    gw = make_gateway()
    b64 = base64.b64encode(images[0]).decode()
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        assert c.post("/v1/models/flowers:predict", json={"instances": [{"b64": b64}]}).status_code == 200
        assert c.post("/v1/classify/flowers", json={"instances": [{"b64": b64}]}).status_code == 200
        v2 = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [b64]}]}
        assert c.post("/v2/models/flowers/infer", json=v2).status_code == 200
        truncated = base64.b64encode(images[0][: len(images[0]) * 2 // 3]).decode()  # header intact
        assert c.post("/v1/models/flowers:predict",
                      json={"instances": [{"b64": truncated}]}).status_code == 400  # a backend error
        assert c.get("/v1/models/nosuch").status_code == 404
        text = c.get("/metrics").text
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    assert labels["incept_jobs"] and "incept_evaluations_total" in labels
    for query in _queries():
        names = re.findall(r"\b((?:http|incept)_[a-z_]+)\b", query)
        assert names, query
        for name in names:
            assert name in labels, f"{name} (in {query}) is not exported"
        grouped = {g.strip() for by in re.findall(r"by \(([^)]*)\)", query) for g in by.split(",")}
        assert grouped <= set().union(*(labels[n] for n in names)), query
    statuses = {s.labels.get("status") for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "http_requests_total"}
    assert any(re.fullmatch(r"4..|5..", s or "") for s in statuses), statuses
    jobs = {s.labels["state"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "incept_jobs"}
    assert jobs == {"queued": 1.0}
    evaluations = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "incept_evaluations_total"]
    assert evaluations == [1.0]
