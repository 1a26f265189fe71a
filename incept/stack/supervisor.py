"""``Stack``: Redis and the three services as child processes of one supervisor.

It starts them, waits until each is healthy, records the state file, restarts
what dies on its own, and stops every child cleanly: each gets SIGTERM and its
grace period (the trainer's: time to write a checkpoint), Redis goes last so
its append-only file is complete. The e2e tests drive the same class to inject
faults (``stop_service``, ``kill_service``, ``stop_redis``...)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from incept import queues
from incept.fsutil import write_json_atomic
from incept.layout import Layout
from incept.redis_server import RedisServer, free_port
from incept.settings import Settings
from incept.stack.control import stop_orphans
from incept.stack.process import Child, end_group, signal_group
from incept.stack.state import (
    StackError,
    StackPaths,
    create_time,
    load_or_create_token,
    read_state,
    supervisor_alive,
)

log = logging.getLogger("incept.stack")

SERVICES = ("evaluator", "trainer", "gateway")

# How long each service gets to stop after SIGTERM before it is killed. The
# trainer needs time to write a checkpoint (its contract: within 30 s).
STOP_TIMEOUT_S = {"trainer": 60.0, "evaluator": 30.0, "gateway": 15.0}
HEALTH_TIMEOUT_S = 240.0  # TensorFlow imports are slow on a busy 2-core machine.
REDIS_RESTART_DELAY_S = 2.0


@dataclass
class Stack:
    data_root: Path
    port: int = 8000  # 0: a free port
    host: str = "127.0.0.1"
    token: str | None = None
    services: tuple[str, ...] = SERVICES
    extra_env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable
    write_state: bool = True
    settings: Settings = field(default_factory=Settings)  # the user's own INCEPT_* settings

    redis: RedisServer | None = field(default=None, init=False)
    children: dict[str, Child] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stopping: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root).resolve()
        self.paths = StackPaths(self.data_root)
        self.layout = Layout(self.data_root)

    # -- addresses --------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def redis_url(self) -> str:
        return self.redis.url if self.redis else ""

    def env(self) -> dict[str, str]:
        """Environment of every child: the user's own INCEPT_* settings, with the
        stack's addresses, data root and token on top."""
        env = dict(os.environ)
        env.update({
            "INCEPT_DATA_ROOT": str(self.data_root),
            "INCEPT_REDIS_URL": self.redis_url,
            "INCEPT_HOST": self.host,
            "INCEPT_PORT": str(self.port),
            # The user's own token list (if any) includes self.token; keep all of it.
            "INCEPT_API_TOKENS": ",".join(self.settings.api_tokens) or self.token or "",
            "INCEPT_PREDICT_BACKEND": "inprocess",
            "INCEPT_LAUNCHER": "local",
            "PYTHONUNBUFFERED": "1",
        })
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.update(self.extra_env)
        return env

    # -- lifecycle ----------------------------------------------------------

    def start(self, timeout_s: float = HEALTH_TIMEOUT_S) -> Stack:
        """Start Redis and every service, wait until all are healthy, write the state file."""
        self.layout.ensure()
        self.paths.stack_dir.mkdir(parents=True, exist_ok=True)
        if self.write_state:
            self._refuse_if_running()
        if self.token is None:
            self.token = load_or_create_token(self.paths, self.settings)
        self.port = self._choose_port(self.port)
        try:
            self._write_state("starting")
            self.start_redis()
            for job_id in self._resume_interrupted_jobs():
                log.info("training job %s was interrupted: queued again to resume from its "
                         "newest checkpoint", job_id)
            for name in self.services:
                self.start_service(name, wait=False)
            self.wait_healthy(timeout_s)
            self._write_state("ready")
        except BaseException:
            self.stop()
            raise
        return self

    def _refuse_if_running(self) -> None:
        state = read_state(self.data_root)
        if state and supervisor_alive(state) and state.get("supervisor_pid") != os.getpid():
            raise StackError(
                f"a stack is already running for {self.data_root} at {state.get('url')} "
                f"(pid {state.get('supervisor_pid')}); stop it with "
                f"'incept down --data-root {self.data_root}'")
        if state:
            # A supervisor that died without cleaning up: end what it left behind.
            stop_orphans(state)

    def _choose_port(self, port: int) -> int:
        if not port:
            return free_port(self.host)
        with socket.socket() as s:
            try:
                s.bind((self.host, port))
            except OSError:
                raise StackError(f"port {port} on {self.host} is in use; choose another "
                                 f"(make up PORT=8080, or incept up --port 8080)") from None
        return port

    def _resume_interrupted_jobs(self) -> list[str]:
        conn = queues.connect(self.redis_url)
        try:
            return queues.resume_interrupted_jobs(conn)
        finally:
            conn.close()

    def start_redis(self, port: int | None = None) -> None:
        """Start (or start again, on its old port) the real Redis server with AOF persistence."""
        if port is None:
            port = self.redis.port if self.redis else 0
        self.redis = RedisServer(self.paths.redis_dir, port=port, host=self.host,
                                 persistent=True).start()

    def stop_redis(self) -> None:
        if self.redis:
            self.redis.stop()

    def make_child(self, name: str) -> Child:
        if name not in SERVICES:
            raise ValueError(f"unknown service {name!r}")
        return Child(name, [self.python, "-m", "incept.cli", name], self.env(),
                     self.paths.log_file(name))

    def start_service(self, name: str, *, wait: bool = True, timeout_s: float = HEALTH_TIMEOUT_S) -> Child:
        with self._lock:
            old = self.children.get(name)
            if old and old.running():
                return old
            if name == "trainer" and old is not None:
                # A trainer stopped mid-job left its request behind: queue it again.
                self._resume_interrupted_jobs()
            child = self.make_child(name)
            if old is not None:
                child.restarts = old.restarts + 1
            child.start()
            self.children[name] = child
        log.info("started %s (pid %s, log %s)", name, child.pid, child.log_path)
        if wait:
            self.wait_healthy(timeout_s, names=(name,))
            self._write_state("ready")
        return child

    def stop_service(self, name: str, timeout_s: float | None = None) -> int | None:
        """Stop one service the way ``stop`` does; returns its exit code."""
        child = self.children.get(name)
        if child is None or not child.running():
            return child.returncode if child else None
        child.terminate()
        code = child.wait(STOP_TIMEOUT_S[name] if timeout_s is None else timeout_s)
        if code is None:
            log.warning("%s did not stop in time; killing it", name)
            child.kill_group()
            code = child.returncode
        return code

    def kill_service(self, name: str) -> None:
        """SIGKILL a service and its forked work horses (fault injection)."""
        child = self.children.get(name)
        if child is not None:
            child.kill_group()

    def stop(self) -> None:
        """Stop every child (in parallel, each with its own grace period), then Redis."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        with contextlib.suppress(Exception):
            self._write_state("stopping")
        running = [c for c in self.children.values() if c.running()]
        for child in running:
            child.terminate()
        deadline = {c.name: time.monotonic() + STOP_TIMEOUT_S[c.name] for c in running}
        for child in running:
            code = child.wait(max(0.0, deadline[child.name] - time.monotonic()))
            if code is None:
                log.warning("%s did not stop within %.0f s; killing it", child.name,
                            STOP_TIMEOUT_S[child.name])
                child.kill_group()
            else:
                # Work horses left in the group (there should be none) go too.
                signal_group(child.pid, signal.SIGKILL)
        self.stop_redis()
        if self.write_state:
            with contextlib.suppress(FileNotFoundError):
                state = read_state(self.data_root)
                if state and state.get("supervisor_pid") == os.getpid():
                    self.paths.state_file.unlink()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- health ---------------------------------------------------------------

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S,
                     names: tuple[str, ...] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(names or self.children)
        while pending:
            for name in sorted(pending):
                child = self.children[name]
                if not child.running():
                    raise StackError(f"{name} exited with code {child.returncode} while "
                                     f"starting; its log ({child.log_path}) ends with:\n{child.tail()}")
                if self.service_healthy(name):
                    log.info("%s is ready", name)
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                names_ = ", ".join(sorted(pending))
                raise StackError(f"{names_} not ready after {timeout_s:.0f} s; see "
                                 + ", ".join(str(self.paths.log_file(n)) for n in sorted(pending)))
            if pending:
                time.sleep(0.3)

    def service_healthy(self, name: str) -> bool:
        child = self.children.get(name)
        if child is None or not child.running():
            return False
        if name == "gateway":
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                return False
        return self._worker_registered(child)

    def _worker_registered(self, child: Child) -> bool:
        """An rq worker is healthy once it has registered in Redis; it must be our
        child (or forked by it), since stale registrations survive in the AOF."""
        from rq import Worker

        try:
            ours = {child.pid} | {p.pid for p in psutil.Process(child.pid).children(recursive=True)}
            conn = queues.connect(self.redis_url, timeout_s=2.0)
            try:
                return any(w.pid in ours for w in Worker.all(connection=conn))
            finally:
                conn.close()
        except Exception:  # Redis restarting, process gone: not healthy yet
            return False

    # -- state file -------------------------------------------------------------

    def state(self, status: str) -> dict:
        me = psutil.Process()
        return {
            "status": status,
            "data_root": str(self.data_root),
            "url": self.url,
            "port": self.port,
            "token": self.token,
            "redis_url": self.redis_url,
            "redis_port": self.redis.port if self.redis else None,
            "redis_pid": self.redis.process.pid if self.redis and self.redis.process else None,
            "supervisor_pid": me.pid,
            "supervisor_create_time": me.create_time(),
            "children": {
                name: {"pid": c.pid, "create_time": create_time(c.pid), "log": str(c.log_path)}
                for name, c in self.children.items() if c.running()
            },
            "updated_at": time.time(),
        }

    def _write_state(self, status: str) -> None:
        if self.write_state:
            write_json_atomic(self.paths.state_file, self.state(status))

    # -- supervision ------------------------------------------------------------

    def supervise(self, stop_event: threading.Event, max_restarts: int = 5) -> None:
        """Restart Redis (on its port, from its append-only file) or a service that
        died on its own, until ``stop_event`` is set. Meant for a thread of ``incept up``."""
        while not stop_event.wait(1.0):
            if self._stopping:
                return
            if not self._restart_redis_if_dead(stop_event):
                return
            for name, child in list(self.children.items()):
                if child.running() or self._stopping or child.restarts >= max_restarts:
                    continue
                if not self._restart_service(name, child, stop_event):
                    return

    def _restart_redis_if_dead(self, stop_event: threading.Event) -> bool:
        """False once the stack is stopping."""
        if not (self.redis and self.redis.process and self.redis.process.poll() is not None):
            return True
        log.warning("Redis exited with code %s; starting it again on port %s",
                    self.redis.process.returncode, self.redis.port)
        stop_event.wait(REDIS_RESTART_DELAY_S)
        if stop_event.is_set() or self._stopping:
            return False
        try:
            self.start_redis()
            self._write_state("ready")
        except Exception as e:
            log.error("could not restart Redis: %s", e)
        return True

    def _restart_service(self, name: str, child: Child, stop_event: threading.Event) -> bool:
        """A dead service's leftovers (an rq work horse still training) get SIGTERM
        and their grace period first, so no two trainers ever run the same job.
        False once the stack is stopping."""
        log.warning("%s exited with code %s; restarting it (log: %s)", name,
                    child.returncode, child.log_path)
        end_group(child.pid, STOP_TIMEOUT_S[name])
        stop_event.wait(min(30.0, 2.0 ** child.restarts))
        if stop_event.is_set() or self._stopping:
            return False
        try:
            self.start_service(name, wait=False)
            self._write_state("ready")
        except Exception as e:  # keep supervising the others
            log.error("could not restart %s: %s", name, e)
        return True
