"""What ``make up`` does, as a newcomer sees it: ``incept up`` in the
foreground on a machine without internet (downloads fail: a dead proxy) runs
the demo job over HTTP on a generated dataset with an announced random
initialisation, prints the evaluations, the exported version, predictions and
the page's URL, keeps serving, and stops every process on Ctrl-C. A second
``incept up`` follows the same job instead of starting another."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from incept.stack import read_state

REPO = Path(__file__).resolve().parents[2]


class Foreground:
    """``incept up`` as a child process whose output we read line by line."""

    def __init__(self, root: Path, env: dict):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "incept.cli", "up", "--port", "0", "--data-root", str(root)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, text: str, timeout_s: float = 300.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"incept up exited ({self.process.poll()}) before {text!r}:\n"
                            + "\n".join(self.lines))
            self.lines.append(line)
            if text in line:
                return line
        pytest.fail(f"no {text!r} after {timeout_s:.0f} s:\n" + "\n".join(self.lines))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(120)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code


@pytest.fixture
def offline_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCEPT_")}
    # No internet: every download goes to a proxy that refuses connections.
    env.update({"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
                "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
                "INCEPT_MODEL_POLL_S": "0.5", "COLUMNS": "200"})
    return env


def test_make_up_runs_the_demo_offline_then_ctrl_c_stops_everything_and_up_resumes(tmp_path, offline_env):
    root = tmp_path / "var"
    up = Foreground(root, offline_env)
    try:
        up.wait_for_line("serving at http://127.0.0.1:")
    finally:
        state = read_state(root)
        if up.process.poll() is None and state is None:
            up.stop(signal.SIGKILL)
    out = up.output
    # Announced fallbacks, then the job over HTTP and its results.
    assert "GENERATED 5-class image set" in out
    assert "RANDOM INITIALISATION" in out and "tiny" in out
    assert "submitted job" in out
    job_id = next(line for line in up.lines if "submitted job" in line).split()[2]
    assert (root / "runs" / job_id / "spec.json").exists()
    assert "evaluations of" in out
    assert "exported: model 'generated-flowers' version" in out
    assert "predictions by 'generated-flowers'" in out
    assert f"the page: {state['url']}/" in out

    pids = [c["pid"] for c in state["children"].values()] + [state["redis_pid"]]
    assert up.stop(signal.SIGINT) == 0  # Ctrl-C
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert read_state(root) is None
    assert "stopped; datasets, runs, models and queues are kept" in up.output

    # The second `make up` follows the same job; SIGTERM stops it like Ctrl-C.
    again = Foreground(root, offline_env)
    try:
        again.wait_for_line("serving at http://127.0.0.1:")
    finally:
        code = again.stop(signal.SIGTERM)
    assert f"following the demo job {job_id} from the last run" in again.output
    assert "submitted job" not in again.output
    assert "exported: model 'generated-flowers' version" in again.output
    assert code == 0
    assert sorted(p.name for p in (root / "runs").iterdir()) == [job_id]
