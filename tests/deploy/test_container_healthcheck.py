"""docker/healthcheck.py (`incept-healthcheck` in the images, used by the
Docker HEALTHCHECKs, compose and the Kubernetes probes), run as the probes run
it — a separate process — against a real Redis, a real rq worker process and a
real HTTP server."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from deploy_support import REPO
from redis import Redis
from rq import Worker

SCRIPT = REPO / "docker/healthcheck.py"


def healthcheck(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INCEPT_")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def wait_for(predicate, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def rq_worker(redis_url, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "rq.cli", "worker", "--url", redis_url,
                             "healthcheck-test"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn = Redis.from_url(redis_url)
    wait_for(lambda: Worker.all(connection=conn), "the rq worker to register")
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_rq_worker_check_follows_the_worker(redis_url, tmp_path, rq_worker):
    env = {"INCEPT_REDIS_URL": redis_url, "INCEPT_DATA_ROOT": str(tmp_path)}
    alive = healthcheck("rq-worker", env=env)
    assert alive.returncode == 0, alive.stderr
    rq_worker.send_signal(signal.SIGTERM)  # a warm shutdown deregisters the worker
    rq_worker.wait(timeout=60)
    dead = healthcheck("rq-worker", env=env)
    assert dead.returncode == 1
    assert "no live rq worker registered for host" in dead.stderr


def test_rq_worker_check_reports_an_unreachable_redis_without_a_traceback(tmp_path):
    env = {"INCEPT_REDIS_URL": "redis://127.0.0.1:9/0", "INCEPT_DATA_ROOT": str(tmp_path)}
    result = healthcheck("rq-worker", env=env)
    assert result.returncode == 1
    assert "does not answer" in result.stderr and "Traceback" not in result.stderr


def test_volume_check_needs_the_shared_volume(tmp_path):
    assert healthcheck("volume", env={"INCEPT_DATA_ROOT": str(tmp_path)}).returncode == 0
    missing = healthcheck("volume", env={"INCEPT_DATA_ROOT": str(tmp_path / "not-mounted")})
    assert missing.returncode == 1
    assert "does not answer" in missing.stderr


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_http_check_wants_a_2xx_answer():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert healthcheck("http", f"{base}/healthz", env={}).returncode == 0
        down = healthcheck("http", f"{base}/readyz", env={})
        assert down.returncode == 1 and "503" in down.stderr
    finally:
        server.shutdown()
        server.server_close()
    closed = healthcheck("http", f"{base}/healthz", "--timeout", "2", env={})
    assert closed.returncode == 1
