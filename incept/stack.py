"""The whole system on one machine, as local processes: a process supervisor.

``Stack`` starts a real Redis (append-only persistence under the data root),
the evaluator worker, a trainer worker and the gateway (in-process prediction
backend) as child processes, each in its own process group with its own log
file under ``<data root>/logs/``. It waits until each is healthy, records a
state file (pids, ports, URL, API token) under ``<data root>/stack/`` for
``incept up --detach`` / ``incept down`` / the CLI client, and stops every child
cleanly: the trainer's whole process group gets SIGTERM and time to write a
checkpoint, the workers finish or abandon their request, Redis goes last so its
append-only file is complete. Everything a job needs lives in Redis (persisted)
and on the data root, so the next ``incept up`` resumes where this one stopped.

The e2e tests drive the same class to inject faults (``stop_service``,
``kill_service``, ``stop_redis``...)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from incept.errors import UserError
from incept.fsutil import write_json_atomic, write_text_atomic
from incept.layout import Layout
from incept.redis_server import RedisServer, free_port

log = logging.getLogger("incept.stack")

SERVICES = ("evaluator", "trainer", "gateway")

# How long each service gets to stop after SIGTERM before it is killed. The
# trainer needs time to write a checkpoint (its contract: within 30 s).
STOP_TIMEOUT_S = {"trainer": 60.0, "evaluator": 30.0, "gateway": 15.0}
HEALTH_TIMEOUT_S = 240.0  # TensorFlow imports are slow on a busy 2-core machine.
REDIS_RESTART_DELAY_S = 2.0


class StackError(UserError):
    """The stack could not start or is not running; the message says why and what to do."""


# ---------------------------------------------------------------------------
# Paths and the state file


@dataclass(frozen=True)
class StackPaths:
    root: Path

    @property
    def stack_dir(self) -> Path:
        return self.root / "stack"

    @property
    def state_file(self) -> Path:
        return self.stack_dir / "state.json"

    @property
    def token_file(self) -> Path:
        return self.stack_dir / "api-token"

    @property
    def demo_file(self) -> Path:
        return self.stack_dir / "demo.json"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def default_data_root() -> Path:
    from incept.settings import Settings

    return Path(Settings().data_root).resolve()


def read_state(data_root: str | Path) -> dict | None:
    """The state file of the stack under ``data_root``, or None."""
    path = StackPaths(Path(data_root).resolve()).state_file
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _process_matches(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The live process with this pid, if it is still the one we recorded (pids get reused)."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def supervisor_alive(state: dict | None) -> bool:
    if not state:
        return False
    return _process_matches(state.get("supervisor_pid"), state.get("supervisor_create_time")) is not None


def load_or_create_token(paths: StackPaths) -> str:
    """The API token: INCEPT_API_TOKENS's first token if set, else one generated
    once and kept (mode 0600) under the data root, so clients keep working across restarts."""
    env = [t.strip() for t in os.environ.get("INCEPT_API_TOKENS", "").split(",") if t.strip()]
    if env:
        return env[0]
    with contextlib.suppress(FileNotFoundError):
        token = paths.token_file.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(24)
    write_text_atomic(paths.token_file, token + "\n")  # mkstemp files are 0600
    return token


# ---------------------------------------------------------------------------
# Children


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}: "
                      f"{' '.join(self.argv)}\n".encode())
            out.flush()
            # Own process group: a Ctrl-C in the terminal reaches only the
            # supervisor, which then stops the children in order.
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def signal(self, sig: int, *, group: bool = False) -> None:
        if not self.running():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.process.wait(timeout_s) if self.process else None
        except subprocess.TimeoutExpired:
            return None

    def kill_group(self) -> None:
        """SIGKILL the child and everything it forked (rq work horses)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


# ---------------------------------------------------------------------------
# The stack


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
            "INCEPT_API_TOKENS": os.environ.get("INCEPT_API_TOKENS", "").strip() or self.token or "",
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
            self.token = load_or_create_token(self.paths)
        self.port = self._choose_port(self.port)
        try:
            self._write_state("starting")
            self.start_redis()
            resumed = resume_interrupted_jobs(self.redis_url)
            for job_id in resumed:
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
        if supervisor_alive(state) and state.get("supervisor_pid") != os.getpid():
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
        import socket

        with socket.socket() as s:
            try:
                s.bind((self.host, port))
            except OSError:
                raise StackError(f"port {port} on {self.host} is in use; choose another "
                                 f"(make up PORT=8080, or incept up --port 8080)") from None
        return port

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
                resume_interrupted_jobs(self.redis_url)
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
            return child.process.returncode if child and child.process else None
        self._send_stop(child)
        code = child.wait(STOP_TIMEOUT_S[name] if timeout_s is None else timeout_s)
        if code is None:
            log.warning("%s did not stop in time; killing it", name)
            child.kill_group()
            code = child.process.returncode
        return code

    def kill_service(self, name: str) -> None:
        """SIGKILL a service and its forked work horses (fault injection)."""
        child = self.children.get(name)
        if child is not None:
            child.kill_group()

    def _send_stop(self, child: Child) -> None:
        # SIGTERM to the main process only, as Kubernetes does: the trainer
        # worker forwards it to its work horse, which writes a checkpoint and
        # queues a resume request; rq workers shut down warm; uvicorn drains.
        child.signal(signal.SIGTERM)

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
            self._send_stop(child)
        deadline = {c.name: time.monotonic() + STOP_TIMEOUT_S[c.name] for c in running}
        for child in running:
            code = child.wait(max(0.0, deadline[child.name] - time.monotonic()))
            if code is None:
                log.warning("%s did not stop within %.0f s; killing it", child.name,
                            STOP_TIMEOUT_S[child.name])
                child.kill_group()
            else:
                # Work horses left in the group (there should be none) go too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
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
                    raise StackError(f"{name} exited with code {child.process.returncode} while "
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

        from incept.queues import connect

        try:
            ours = {child.pid} | {p.pid for p in psutil.Process(child.pid).children(recursive=True)}
            conn = connect(self.redis_url, timeout_s=2.0)
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
                name: {"pid": c.pid, "create_time": _create_time(c.pid), "log": str(c.log_path)}
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
        died on its own, until ``stop_event`` is set. A dead service's leftovers (an
        rq work horse still training) get SIGTERM and their grace period first, so
        no two trainers ever run the same job. Meant for a thread of ``incept up``."""
        while not stop_event.wait(1.0):
            if self._stopping:
                return
            if self.redis and self.redis.process and self.redis.process.poll() is not None:
                log.warning("Redis exited with code %s; starting it again on port %s",
                            self.redis.process.returncode, self.redis.port)
                stop_event.wait(REDIS_RESTART_DELAY_S)
                if stop_event.is_set() or self._stopping:
                    return
                try:
                    self.start_redis()
                    self._write_state("ready")
                except Exception as e:
                    log.error("could not restart Redis: %s", e)
            for name, child in list(self.children.items()):
                if child.running() or self._stopping or child.restarts >= max_restarts:
                    continue
                log.warning("%s exited with code %s; restarting it (log: %s)", name,
                            child.process.returncode, child.log_path)
                _end_group(child.pid, STOP_TIMEOUT_S[name])
                stop_event.wait(min(30.0, 2.0 ** child.restarts))
                if stop_event.is_set() or self._stopping:
                    return
                try:
                    self.start_service(name, wait=False)
                    self._write_state("ready")
                except Exception as e:  # keep supervising the others
                    log.error("could not restart %s: %s", name, e)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _end_group(pgid: int | None, timeout_s: float) -> None:
    """SIGTERM what is left of a process group, then SIGKILL it after ``timeout_s``."""
    if not pgid or not _group_alive(pgid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _create_time(pid: int | None) -> float | None:
    try:
        return psutil.Process(pid).create_time() if pid else None
    except psutil.Error:
        return None


# ---------------------------------------------------------------------------
# Resuming and stopping from outside


def resume_interrupted_jobs(redis_url: str) -> list[str]:
    """Queue again every training job that is not finished and has no request
    waiting in the queue or running on a live worker (its worker was killed
    before it could queue a resume request): the trainer resumes it from its
    newest checkpoint. Call before a trainer worker starts."""
    from rq.exceptions import NoSuchJobError
    from rq.registry import StartedJobRegistry

    from incept.jobstate import TERMINAL_STATES, JobState
    from incept.queues import (
        TRAIN_FUNC,
        TRAIN_QUEUE,
        connect,
        enqueue_training,
        fetch_request,
        rq_queue,
        train_request_id,
    )

    conn = connect(redis_url)
    resumed = []
    try:
        queue = rq_queue(conn, TRAIN_QUEUE)
        covered = {job.args[0] for job in queue.jobs
                   if job is not None and job.func_name == TRAIN_FUNC and job.args}
        for rid in StartedJobRegistry(queue=queue).get_job_ids():
            with contextlib.suppress(NoSuchJobError):
                job = fetch_request(conn, rid)
                if job.args and _request_has_live_worker(conn, job):
                    covered.add(job.args[0])
        jobs = JobState(conn)
        for job_id in jobs.list_ids():
            info = jobs.get(job_id) or {}
            launcher = info.get("launcher")
            if info.get("state") in TERMINAL_STATES or job_id in covered:
                continue
            if isinstance(launcher, dict) and launcher.get("launcher") not in (None, "local"):
                continue  # a Kubernetes Job, not ours to restart
            with contextlib.suppress(NoSuchJobError):
                fetch_request(conn, train_request_id(job_id)).delete()
            enqueue_training(conn, job_id)
            resumed.append(job_id)
    finally:
        conn.close()
    return resumed


def _request_has_live_worker(conn, request) -> bool:
    from rq import Worker

    name = getattr(request, "worker_name", None)
    if not name:
        return False
    for worker in Worker.all(connection=conn):
        if worker.name == name and psutil.pid_exists(worker.pid or 0):
            return True
    return False


def stop_orphans(state: dict, timeout_s: float = 60.0) -> None:
    """End the processes a dead supervisor recorded (verified by start time)."""
    procs = []
    for name, info in (state.get("children") or {}).items():
        proc = _process_matches(info.get("pid"), info.get("create_time"))
        if proc is not None:
            log.warning("stopping %s (pid %s) left by a previous stack", name, proc.pid)
            with contextlib.suppress(psutil.Error):
                proc.terminate()
            procs.append(proc)
    _gone, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    redis_pid = state.get("redis_pid")
    if redis_pid:
        try:
            proc = psutil.Process(redis_pid)
            if "redis" in proc.name():
                proc.terminate()
                proc.wait(10)
        except psutil.Error:
            pass


def stop_stack(data_root: str | Path, timeout_s: float = 120.0) -> str:
    """Stop the stack running for ``data_root`` (what ``incept down`` does)."""
    paths = StackPaths(Path(data_root).resolve())
    state = read_state(paths.root)
    if not state:
        raise StackError(f"no stack is running for {paths.root} (no {paths.state_file})")
    if supervisor_alive(state):
        pid = state["supervisor_pid"]
        os.kill(pid, signal.SIGTERM)
        try:
            psutil.Process(pid).wait(timeout_s)
        except psutil.TimeoutExpired:
            raise StackError(f"the stack's supervisor (pid {pid}) did not stop within "
                             f"{timeout_s:.0f} s; see {paths.log_file('supervisor')}") from None
        except psutil.NoSuchProcess:
            pass
    else:
        stop_orphans(state)
    with contextlib.suppress(FileNotFoundError):
        paths.state_file.unlink()
    return state.get("url", "")


def wait_ready_state(data_root: Path, process: subprocess.Popen, timeout_s: float) -> dict:
    """Wait for a detached supervisor to report ``ready`` in its state file."""
    paths = StackPaths(data_root)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = ""
            with contextlib.suppress(FileNotFoundError):
                tail = paths.log_file("supervisor").read_text(errors="replace")[-3000:]
            raise StackError(f"the stack failed to start (exit code {process.returncode}); "
                             f"{paths.log_file('supervisor')} ends with:\n{tail}")
        state = read_state(data_root)
        if state and state.get("status") == "ready" and state.get("supervisor_pid") == process.pid:
            return state
        time.sleep(0.3)
    raise StackError(f"the stack was not ready after {timeout_s:.0f} s; "
                     f"see {paths.log_file('supervisor')}")
