"""Where a local stack keeps its things under the data root, its state file
(pids, ports, URL, API token) and its API token."""

from __future__ import annotations

import contextlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import psutil

from incept.errors import UserError
from incept.fsutil import write_text_atomic
from incept.settings import Settings


class StackError(UserError):
    """The stack could not start or is not running; the message says why and what to do."""


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
    return Path(Settings().data_root).resolve()


def read_state(data_root: str | Path) -> dict | None:
    """The state file of the stack under ``data_root``, or None."""
    path = StackPaths(Path(data_root).resolve()).state_file
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def process_matches(pid: int | None, create_time: float | None) -> psutil.Process | None:
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


def create_time(pid: int | None) -> float | None:
    try:
        return psutil.Process(pid).create_time() if pid else None
    except psutil.Error:
        return None


def supervisor_alive(state: dict | None) -> bool:
    if not state:
        return False
    return process_matches(state.get("supervisor_pid"), state.get("supervisor_create_time")) is not None


def load_or_create_token(paths: StackPaths, settings: Settings) -> str:
    """The API token: the first of the configured tokens (INCEPT_API_TOKENS, or
    its file) if any, else one generated once and kept (mode 0600) under the
    data root, so clients keep working across restarts."""
    configured = settings.tokens()
    if configured:
        return configured[0]
    with contextlib.suppress(FileNotFoundError):
        token = paths.token_file.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(24)
    write_text_atomic(paths.token_file, token + "\n")  # mkstemp files are 0600
    return token
