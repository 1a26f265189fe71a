"""A service as a child process in its own process group, with its own log
file; and ending a whole process group (the child and what it forked)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def signal_group(pgid: int | None, sig: int) -> bool:
    """Send ``sig`` to every process of the group; whether the group was there."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def end_group(pgid: int | None, timeout_s: float) -> None:
    """SIGTERM what is left of a process group, then SIGKILL it after ``timeout_s``."""
    if not signal_group(pgid, 0):
        return
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while signal_group(pgid, 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_group(pgid, signal.SIGKILL)


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

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process else None

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

    def terminate(self) -> None:
        """SIGTERM to the main process only, as Kubernetes does: the trainer
        worker forwards it to its work horse, which writes a checkpoint and
        queues a resume request; rq workers shut down warm; uvicorn drains."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.process.wait(timeout_s) if self.process else None
        except subprocess.TimeoutExpired:
            return None

    def kill_group(self) -> None:
        """SIGKILL the child and everything it forked (rq work horses)."""
        if self.process is None:
            return
        signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""
