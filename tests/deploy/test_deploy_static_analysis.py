"""checkov on the rendered manifests, the trainer Job templates and every
Dockerfile (no failed check; every skip carries its reason), and hadolint on
every Dockerfile (no error, warning or info). Each run also scans a deliberately
bad control file, so a silently-not-scanning tool cannot pass."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_support import REPO, tool

from services.gateway.launchers.kubernetes import build_job

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))

BAD_POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "control", "namespace": "incept"},
    "spec": {"containers": [{"name": "c", "image": "busybox:latest",
                             "securityContext": {"privileged": True}}]},
}
BAD_DOCKERFILE = "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nADD . /app\n"


def with_default_bases(text: str) -> str:
    """The Dockerfile with ${ARG} in its FROM lines replaced by the ARG's default."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    return re.sub(r"^(FROM\s+)\$\{(\w+)\}", lambda m: m.group(1) + args[m.group(2)], text,
                  flags=re.M)


def base_images(text: str) -> list[str]:
    """Every FROM's image, as users build it."""
    return re.findall(r"^FROM\s+(\S+)", with_default_bases(text), re.M)


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory, rendered, templates) -> list[dict]:
    scan = tmp_path_factory.mktemp("checkov")
    for overlay, objects in rendered.items():
        (scan / f"rendered-{overlay}.yaml").write_text(yaml.safe_dump_all(objects))
        for name, template in templates[overlay].items():
            # What the launcher creates: filled in, in the project's namespace.
            job = build_job(template, "flowers-1")
            job["metadata"]["namespace"] = "incept"
            (scan / f"template-{overlay}-{name}").write_text(yaml.safe_dump(job))
    for dockerfile in DOCKERFILES:
        # As users build it: the base-image build arguments at their defaults
        # (checkov cannot see a tag through FROM ${PYTHON_IMAGE}).
        (scan / dockerfile.name).write_text(with_default_bases(dockerfile.read_text()))
    control = scan / "control"
    control.mkdir()
    (control / "bad-pod.yaml").write_text(yaml.safe_dump(BAD_POD))
    (control / "bad.Dockerfile").write_text(BAD_DOCKERFILE)
    proc = subprocess.run(
        [tool("checkov"), "-d", str(scan), "--framework", "kubernetes", "dockerfile",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_NO_COLOR": "1"}, cwd=scan,
    )
    assert proc.stdout.strip(), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    return report if isinstance(report, list) else [report]


def _checks(report: list[dict], kind: str) -> list[dict]:
    return [c for r in report for c in r.get("results", {}).get(kind, [])]


def test_checkov_scanned_every_file(checkov_report):
    scanned = {Path(c["file_path"]).name for c in _checks(checkov_report, "passed_checks")}
    expected = {f"rendered-{o}.yaml" for o in ("dev", "gpu")} | {d.name for d in DOCKERFILES}
    assert expected <= scanned
    assert any(name.startswith("template-gpu-") for name in scanned)
    assert {r["check_type"] for r in checkov_report} >= {"kubernetes", "dockerfile"}


def test_checkov_finds_no_failure_outside_the_control(checkov_report):
    failed = _checks(checkov_report, "failed_checks")
    ours = [(c["check_id"], c["file_path"], c["resource"]) for c in failed
            if "/control/" not in c["file_path"]]
    assert ours == []
    # The control files do fail: the scan really runs on both frameworks.
    control_ids = {c["check_id"] for c in failed if "/control/" in c["file_path"]}
    assert "CKV_K8S_16" in control_ids  # privileged container
    assert "CKV_DOCKER_7" in control_ids  # base image :latest


def test_every_checkov_skip_has_a_reason(checkov_report):
    skipped = _checks(checkov_report, "skipped_checks")
    assert skipped, "the manifests carry explicit skips; checkov should report them"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.split()) >= 5, (check["check_id"], check["resource"], reason)


def _hadolint(path: Path) -> tuple[int, list[dict]]:
    # Default failure threshold (info): any finding at all makes the exit status non-zero.
    proc = subprocess.run([tool("hadolint"), "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, json.loads(proc.stdout or "[]")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_reports_nothing(dockerfile):
    assert _hadolint(dockerfile) == (0, [])


def test_hadolint_control_is_reported(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD_DOCKERFILE)
    status, findings = _hadolint(bad)
    assert status != 0
    assert {"DL3007", "DL3008"} <= {r["code"] for r in findings}




@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_invariants(dockerfile):
    text = dockerfile.read_text()
    for image in base_images(text):
        # A full version tag on every base image (no floating minor or latest).
        assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+(\.\d+)?[-\w.]*", image), image
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert user and int(user.group(1)) > 0, "a numeric non-root user"
    assert re.search(r"^HEALTHCHECK .*\n?\s*CMD \[", text, re.M)
    assert not re.search(r"(?i)^(ENV|ARG)\s+\S*(TOKEN|SECRET|PASSWORD)", text, re.M)
    if dockerfile.name == "redis.Dockerfile":
        # Debian's redis-server, nothing built: one stage; the stock image's uid.
        assert user.groups() == ("999", "1000")
        return
    assert len(base_images(text)) >= 2, "multi-stage: a build stage and a slim runtime stage"
    assert user.groups() == ("10001", "10001")
    assert "--constraint /src/requirements.lock" in text or "--constraint requirements.lock" in text
    # The base is a build argument defaulting to the official Python image.
    assert "ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm\n" in text
    assert re.findall(r"^FROM (\S+)", text, re.M)[-1] == "${PYTHON_IMAGE}"
