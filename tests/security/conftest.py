"""A real system to attack: the gateway (``incept gateway``: uvicorn on a free
127.0.0.1 port, its own process, the in-process prediction backend with tiny-net
SavedModels), a real Redis server and a real rq worker process (``incept
trainer``) converting uploads. Each test sends hostile requests over HTTP and
checks the answer (a 4xx), the gateway's peak memory (``VmHWM``), what is left
on the volume, and that both processes are still alive."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.fakes.gateway_server import free_port
from tests.services.gateway.conftest import CLASSES, encode, exported_models  # noqa: F401

TOKEN = "security-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parents[2]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class System:
    root: Path
    url: str
    redis_url: str
    gateway: subprocess.Popen
    worker: subprocess.Popen
    logs: Path
    settings: dict = field(default_factory=dict)

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 120), **kw)

    def alive(self) -> None:
        """Both processes still run (a hostile request crashed neither)."""
        for name, proc in (("gateway", self.gateway), ("worker", self.worker)):
            assert proc.poll() is None, f"the {name} exited ({proc.returncode}):\n{self.log(name)}"

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def uploads_left(self) -> list[str]:
        uploads = self.root / "uploads"
        return sorted(p.name for p in uploads.iterdir()) if uploads.is_dir() else []


def _env(root: Path, redis_url: str, settings: dict) -> dict[str, str]:
    env = {**os.environ, "INCEPT_DATA_ROOT": str(root), "INCEPT_REDIS_URL": redis_url,
           "INCEPT_API_TOKENS": TOKEN, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    env.update({f"INCEPT_{k.upper()}": str(v) for k, v in settings.items()})
    env.pop("INCEPT_API_TOKEN", None)
    return env


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the gateway did not become healthy:\n{log.read_text()[-3000:]}")


def start_system(tmp: Path, redis_url: str, models: Path, *, worker: bool = True,
                 **settings) -> System:
    root = tmp / "data"
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    shutil.copytree(models, root / "models")
    port = free_port()
    env = _env(root, redis_url, settings)
    cli = [sys.executable, "-m", "incept.cli"]
    with open(logs / "gateway.log", "wb") as glog, open(logs / "worker.log", "wb") as wlog:
        gateway = subprocess.Popen([*cli, "gateway", "--port", str(port)], env=env, cwd=REPO,
                                   stdout=glog, stderr=subprocess.STDOUT)
        # Without a worker: a placeholder process that stays up, so alive() holds.
        command = [*cli, "trainer"] if worker else [sys.executable, "-c", "import time; time.sleep(3600)"]
        worker_proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=wlog, stderr=subprocess.STDOUT)
    system = System(root, f"http://127.0.0.1:{port}", redis_url, gateway, worker_proc, logs, settings)
    try:
        _wait_healthy(system.url, gateway, logs / "gateway.log")
    except BaseException:
        stop_system(system)
        raise
    return system


def stop_system(system: System) -> None:
    for proc in (system.gateway, system.worker):
        if proc.poll() is None:
            proc.terminate()
    for proc in (system.gateway, system.worker):
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Small limits so that each hostile request crosses one with little data.
LIMITS = {
    "max_request_pixels": 4_000_000,
    "max_archive_files": 200,
    "max_concurrent_uploads": 2,
    "max_event_streams": 4,
    "event_stream_max_s": 20,
}


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_server, exported_models) -> Iterator[System]:  # noqa: F811
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    system = start_system(tmp_path_factory.mktemp("security"), redis_server.url, exported_models,
                          **LIMITS)
    yield system
    stop_system(system)


@pytest.fixture
def http(system) -> Iterator[httpx.Client]:
    with system.client(headers=AUTH) as c:
        yield c
    system.alive()
