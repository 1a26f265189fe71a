"""Stopping a stack from outside its supervisor (``incept down``), ending what a
dead supervisor left behind, and waiting for a detached one to be ready."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from incept.stack.process import signal_group
from incept.stack.state import StackError, StackPaths, process_matches, read_state, supervisor_alive

log = logging.getLogger("incept.stack")


def stop_orphans(state: dict, timeout_s: float = 60.0) -> None:
    """End the processes a dead supervisor recorded (verified by start time)."""
    procs = []
    for name, info in (state.get("children") or {}).items():
        proc = process_matches(info.get("pid"), info.get("create_time"))
        if proc is not None:
            log.warning("stopping %s (pid %s) left by a previous stack", name, proc.pid)
            with contextlib.suppress(psutil.Error):
                proc.terminate()
            procs.append(proc)
    _gone, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        signal_group(proc.pid, signal.SIGKILL)
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
