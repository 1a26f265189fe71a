"""``incept gateway`` serves the API with uvicorn on Settings.host:port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from incept.redis_server import free_port

ROOT = Path(__file__).resolve().parents[3]


def test_incept_gateway_serves(tmp_path, redis_url):
    port = free_port()
    env = {**os.environ, "INCEPT_DATA_ROOT": str(tmp_path / "data"), "INCEPT_REDIS_URL": redis_url,
           "INCEPT_API_TOKENS": "a,b", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "incept.cli", "gateway", "--port", str(port)],
                            cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.2)
        assert r.json()["status"] == "ok"
        assert (tmp_path / "data" / "runs").is_dir()  # the layout was created
        r = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers={"Authorization": "Bearer b"})
        assert r.status_code == 200 and r.json() == {"jobs": []}
        r = httpx.get(f"http://127.0.0.1:{port}/readyz")
        assert r.status_code == 503 and r.json()["checks"]["backend"] == "not ready"
        r = httpx.get(f"http://127.0.0.1:{port}/readyz", headers={"Authorization": "Bearer b"})
        assert r.status_code == 503 and r.json()["checks"]["backend"] == "no model exported yet"
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM (exit status -15).
        assert proc.wait(30) in (0, -15)
