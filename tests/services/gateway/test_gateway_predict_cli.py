"""``incept predict`` through the gateway, TF Serving gRPC and REST (the test double)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.tfserving import FakeTFServing
from tests.services.gateway.conftest import TOKEN

ROOT = Path(__file__).resolve().parents[3]


def _incept(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "incept.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
                               "INCEPT_DATA_ROOT": "/nonexistent"})


@pytest.fixture
def image_files(tmp_path, images):
    paths = []
    for i, data in enumerate(images[:2]):
        p = tmp_path / f"photo{i}.jpg"
        p.write_bytes(data)
        paths.append(str(p))
    return paths


def test_predict_everywhere_agrees(gateway, exported_models, image_files):
    server = FakeTFServing(exported_models).start()
    try:
        answers = []
        # --rest against the gateway too: its /v1 is TF Serving's REST API.
        for where in (["--url", gateway.url], ["--grpc", server.grpc_target], ["--rest", server.rest_url],
                      ["--rest", gateway.url]):
            r = _incept("predict", *image_files, *where, "--model", "flowers", "--json")
            assert r.returncode == 0, r.stderr
            answers.append(json.loads(r.stdout))
    finally:
        server.stop()
    labels = [[[t["label"] for t in p["top"]] for p in a["predictions"]] for a in answers]
    assert labels[0] == labels[1] == labels[2] == labels[3]
    r = _incept("predict", image_files[0], "--url", gateway.url, "--model", "strict")
    assert r.returncode == 0 and "not one of the known classes" in r.stdout


def test_predict_errors_are_clear(gateway, image_files, tmp_path):
    r = _incept("predict", str(tmp_path / "missing.jpg"), "--url", gateway.url)
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    r = _incept("predict", image_files[0], "--url", gateway.url, "--model", "nosuch")
    assert r.returncode == 2 and "unknown model" in r.stderr
    r = _incept("predict", image_files[0], "--grpc", "127.0.0.1:1")
    assert r.returncode == 2 and "--model" in r.stderr


def test_predict_finds_the_local_stack_under_data_root(make_gateway, layout, image_files):
    """As ``incept status --data-root`` does: the URL and token come from the
    stack's state file, here of a gateway that wants a token for prediction."""
    from incept.fsutil import write_json_atomic
    from incept.stack import StackPaths

    gateway = make_gateway(protect_predict=True)
    write_json_atomic(StackPaths(layout.root).state_file, {"url": gateway.url, "token": TOKEN})
    for command in (["status"], ["predict", image_files[0], "--model", "flowers"]):
        r = _incept(*command, "--data-root", str(layout.root))
        assert r.returncode == 0, (command, r.stderr)
    assert "model flowers, version" in r.stdout
    refused = _incept("predict", image_files[0], "--url", gateway.url, "--model", "flowers")
    assert refused.returncode == 2 and "API token" in refused.stderr  # the token came from the file
