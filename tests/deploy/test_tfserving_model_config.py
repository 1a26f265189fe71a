"""docker/tfserving_models.py (`incept-tfserving-config`): the TF Serving model
config follows the models on the shared volume, parses as tensorflow-serving-api's
ModelServerConfig, and `ready` asks a server speaking TF Serving's REST model
status protocol (TF Serving itself cannot run here)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from deploy_support import REPO
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2 as pb

SCRIPT = REPO / "docker/tfserving_models.py"


def run(*args: str, data_root, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCEPT_")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60, env={**env, "INCEPT_DATA_ROOT": str(data_root)}, **kw)


def parsed(path) -> dict[str, str]:
    config = text_format.Parse(path.read_text(), pb.ModelServerConfig())
    return {m.name: m.base_path for m in config.model_config_list.config}


@pytest.fixture
def data_root(tmp_path):
    models = tmp_path / "models"
    (models / "flowers" / "3").mkdir(parents=True)
    (models / "flowers" / ".tmp-export-4").mkdir()  # an export in progress is not a version
    (models / "unexported").mkdir()  # no version yet: not served
    return tmp_path


def test_write_names_every_model_with_a_version(data_root):
    assert run("write", data_root=data_root).returncode == 0
    config = data_root / "serving/models.config"
    assert parsed(config) == {"flowers": str(data_root.resolve() / "models/flowers")}
    assert "num_versions: 1" in config.read_text()


def test_a_pinned_version_is_served_by_the_specific_policy(data_root):
    from incept.layout import pin_version

    (data_root / "models/flowers/5").mkdir()
    pin_version(data_root / "models/flowers", 3)  # what the page's rollback writes
    assert run("write", data_root=data_root).returncode == 0
    config = text_format.Parse((data_root / "serving/models.config").read_text(), pb.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert entry.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(entry.model_version_policy.specific.versions) == [3]
    pin_version(data_root / "models/flowers", None)  # unpinned: the newest again
    assert run("write", data_root=data_root).returncode == 0
    (entry,) = text_format.Parse((data_root / "serving/models.config").read_text(),
                                 pb.ModelServerConfig()).model_config_list.config
    assert entry.model_version_policy.latest.num_versions == 1


def test_watch_follows_new_models_and_stops_on_sigterm(data_root):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCEPT_")}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "watch", "--interval", "0.2"],
                            env={**env, "INCEPT_DATA_ROOT": str(data_root)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    config = data_root / "serving/models.config"
    try:
        deadline = time.monotonic() + 60
        while not (config.exists() and "flowers" in parsed(config)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        (data_root / "models/unexported/1").mkdir()
        while set(parsed(config)) != {"flowers", "unexported"}:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


class FakeModelStatus(http.server.BaseHTTPRequestHandler):
    """GET /v1/models/<name> as TF Serving's REST API answers it."""
    states: dict[str, str] = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.removeprefix("/v1/models/")
        if name not in self.states:
            body = {"error": f"Servable not found for request: Latest({name})"}
            self.send_response(404)
        elif self.states[name] == "END":  # what TF Serving reports for a version it could not load
            body = {"model_version_status": [{"version": "3", "state": "END", "status": {
                "error_code": "INVALID_ARGUMENT", "error_message": "SavedModel is broken"}}]}
            self.send_response(200)
        else:
            body = {"model_version_status": [{"version": "3", "state": self.states[name],
                                              "status": {"error_code": "OK", "error_message": ""}}]}
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def tfserving_rest():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeModelStatus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", FakeModelStatus.states
    server.shutdown()
    server.server_close()
    FakeModelStatus.states.clear()


def test_ready_follows_the_model_status(data_root, tfserving_rest):
    url, states = tfserving_rest
    missing = run("ready", data_root=data_root)
    assert missing.returncode == 1 and "no usable model config" in missing.stderr
    run("write", data_root=data_root)
    assert run("ready", data_root=data_root).returncode == 0  # the file alone (compose)
    not_loaded = run("ready", "--rest", url, data_root=data_root)
    assert not_loaded.returncode == 1 and "404" in not_loaded.stderr
    states["flowers"] = "LOADING"
    loading = run("ready", "--rest", url, data_root=data_root)
    assert loading.returncode == 1 and "no AVAILABLE version (version 3 LOADING)" in loading.stderr
    states["flowers"] = "AVAILABLE"
    assert run("ready", "--rest", url, data_root=data_root).returncode == 0


def test_ready_with_no_model_configured_yet(tmp_path, tfserving_rest):
    """Before the first export the pod is ready (nothing to serve): no deadlock."""
    url, _ = tfserving_rest
    assert run("write", data_root=tmp_path).returncode == 0
    assert parsed(tmp_path / "serving/models.config") == {}
    assert run("ready", "--rest", url, data_root=tmp_path).returncode == 0


def test_one_broken_model_does_not_take_the_others_offline(data_root, tfserving_rest):
    """Serving what it can: ready while some model is AVAILABLE, the broken one named."""
    url, states = tfserving_rest
    (data_root / "models" / "broken" / "1").mkdir(parents=True)
    (data_root / "models" / "loading" / "1").mkdir(parents=True)
    run("write", data_root=data_root)
    assert set(parsed(data_root / "serving/models.config")) == {"flowers", "broken", "loading"}
    states.update(flowers="AVAILABLE", broken="END", loading="LOADING")
    partial = run("ready", "--rest", url, data_root=data_root)
    assert partial.returncode == 0, partial.stderr
    assert "not served: model 'broken' has no AVAILABLE version (version 3 END (SavedModel is broken))" in partial.stderr
    assert "model 'loading'" in partial.stderr and "flowers" not in partial.stderr
    states["flowers"] = "END"
    none = run("ready", "--rest", url, data_root=data_root)
    assert none.returncode == 1 and "not ready: no model is served" in none.stderr
