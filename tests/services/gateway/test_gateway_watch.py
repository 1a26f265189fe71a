"""``incept watch`` (incept.console.watch) against the served gateway
with a real Redis: it follows the event stream past the end of training until
the last checkpoint's evaluation arrives and the gateway ends the stream; it
waits while the gateway holds all the event streams it may, and resumes
dropped streams without showing an event twice."""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from incept.client import GatewayClient
from incept.console import watch
from incept.fsutil import write_json_atomic
from incept.jobstate import JobState
from incept.queues import connect
from tests.services.gateway.conftest import TOKEN, save_checkpoint

ROOT = Path(__file__).resolve().parents[3]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEC = {"dataset": "flowers", "model_name": "tiny", "max_steps": 4, "batch_size": 4}


def test_watch_prints_evaluations_that_finish_after_training(gateway, layout, redis_url):
    write_json_atomic(layout.dataset("flowers") / "dataset.json",
                      {"class_names": ["a", "b"], "counts": {"train": 4}})
    out = io.StringIO()
    with GatewayClient(gateway.url, TOKEN) as client:
        job_id = client.submit(SPEC)["job_id"]
        state = JobState(connect(redis_url))
        state.set_state(job_id, "running", path="head_only")  # as the trainer reports it
        # The head-only feature pass: its own bar, before training's.
        state.advance_phase(job_id, "features")
        state.emit(job_id, "features", {"done": 312, "total": 736, "images_per_sec": 4.1, "eta_s": 100})
        state.advance_phase(job_id, "training")
        for step in (2, 4):
            save_checkpoint(layout, job_id, step)
            state.emit(job_id, "checkpoint", {"step": step})
        state.set_state(job_id, "succeeded", step=4)

        def evaluator():  # the last checkpoint's evaluation lands once watch is waiting for it
            deadline = time.monotonic() + 120
            while "waiting for the evaluation of steps 2, 4" not in out.getvalue():
                assert time.monotonic() < deadline, out.getvalue()
                time.sleep(0.05)
            run = layout.run(job_id)
            for step, version in ((2, None), (4, 2)):
                write_json_atomic(run.eval_result(step), {
                    "job_id": job_id, "step": step, "accuracy": 0.25 * step, "recall_at_5": 1.0,
                    "loss": 0.1, "exported_version": version})
                state.emit(job_id, "eval", {"step": step, "accuracy": 0.25 * step,
                                            "recall_at_5": 1.0, "loss": 0.1})
                if version:
                    state.emit(job_id, "export", {"step": step, "version": version, "model": "flowers"})

        thread = threading.Thread(target=evaluator, daemon=True)
        thread.start()
        code = watch(client, job_id, console=Console(file=out, width=120))
        thread.join(5)
    text = out.getvalue()
    assert code == 0, text
    assert "state: succeeded" in text
    assert "evaluated step 2: accuracy 0.500" in text and "evaluated step 4: accuracy 1.000" in text
    assert "exported flowers version 2" in text
    assert "phase: features" in text and "phase: training" in text
    features_line = next(line for line in text.splitlines() if line.startswith("features"))
    assert features_line.endswith("312/736 · 4.1 img/s · 1:40 left"), features_line
    bars = [line.split()[0] for line in text.splitlines() if line.startswith(("features", "training"))]
    assert bars[-2:] == ["features", "training"], text  # in the order the job runs them
    assert text.index("state: succeeded") < text.index("evaluated step 4") < text.rstrip().rindex(
        f"{job_id}: succeeded")


def _submitted(client: GatewayClient, layout) -> str:
    write_json_atomic(layout.dataset("flowers") / "dataset.json",
                      {"class_names": ["a", "b"], "counts": {"train": 4}})
    return client.submit(SPEC)["job_id"]


def _finished_job(client: GatewayClient, layout, redis_url: str) -> str:
    """A job whose events are all in Redis and that has no checkpoint left to
    evaluate: its stream replays them and ends at once."""
    job_id = _submitted(client, layout)
    state = JobState(connect(redis_url))
    state.set_state(job_id, "running")
    state.advance_phase(job_id, "training")
    state.emit(job_id, "checkpoint", {"step": 2})
    state.set_state(job_id, "succeeded", step=4)
    return job_id


@contextlib.contextmanager
def _held_stream(url: str, redis_url: str) -> Iterator[httpx.Response]:
    """The event stream of another job, one still running, open (its first line
    read) until the block ends."""
    JobState(connect(redis_url)).create("running-job", dataset="flowers")
    with httpx.stream("GET", f"{url}/v1/jobs/running-job/events", headers=AUTH,
                      timeout=httpx.Timeout(30, read=None)) as held:
        assert held.status_code == 200
        lines = held.iter_lines()  # kept: a collected line iterator closes its response
        next(lines)
        yield held


class _Watch:
    """``incept watch JOB`` as a user runs it, its output collected as it comes."""

    def __init__(self, url: str, job_id: str):
        self.job_id = job_id
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "incept.cli", "watch", job_id, "--url", url, "--token", TOKEN],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={"PATH": "/usr/bin:/bin", "INCEPT_DATA_ROOT": "/nonexistent",
                 "PYTHONUNBUFFERED": "1", "COLUMNS": "120"})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, text: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None and time.monotonic() < deadline, (self.lines, self.stderr())
            time.sleep(0.05)

    def finish(self, timeout_s: float = 60) -> int:
        code = self.proc.wait(timeout_s)
        self.reader.join(5)
        return code

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.poll() is not None else ""

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)


@pytest.fixture
def start_watch() -> Iterator[Callable[[str, str], _Watch]]:
    started: list[_Watch] = []

    def start(url: str, job_id: str) -> _Watch:
        started.append(_Watch(url, job_id))
        return started[-1]

    yield start
    for watching in started:  # a failed test leaves none running
        if watching.proc.poll() is None:
            watching.proc.kill()
            watching.proc.wait(10)


BUSY = "the gateway is at its event-stream limit; retrying in 5 s"  # the gateway's Retry-After


@contextlib.contextmanager
def _watch_told_to_wait(make_gateway, layout, redis_url, start_watch) -> Iterator[_Watch]:
    """``incept watch`` of a finished job on a gateway allowed one event stream,
    which another client holds until the block ends: the watch has been told
    the gateway is busy."""
    gateway = make_gateway(max_event_streams=1)
    with GatewayClient(gateway.url, TOKEN) as client:
        job_id = _finished_job(client, layout, redis_url)
    with _held_stream(gateway.url, redis_url):
        watching = start_watch(gateway.url, job_id)
        watching.wait_for(BUSY)
        yield watching


def test_watch_waits_while_the_gateway_holds_all_its_streams(make_gateway, layout, redis_url,
                                                             start_watch):
    with _watch_told_to_wait(make_gateway, layout, redis_url, start_watch) as watching:
        job_id = watching.job_id
    code = watching.finish()
    assert code == 0, (watching.lines, watching.stderr())
    assert watching.count(BUSY) == 1, watching.lines  # the slot was free at the second attempt
    for line in ("state: running", "phase: training", "checkpoint at step 2", "state: succeeded"):
        assert watching.count(line) == 1, (line, watching.lines)
    assert watching.lines[-1].strip() == f"{job_id}: succeeded"


def test_ctrl_c_stops_a_watch_that_waits_for_a_stream(make_gateway, layout, redis_url, start_watch):
    with _watch_told_to_wait(make_gateway, layout, redis_url, start_watch) as watching:
        watching.proc.send_signal(signal.SIGINT)
        code = watching.finish()
    assert code == 130
    assert "Traceback" not in watching.stderr()


def test_watch_resumes_dropped_streams_without_repeating_events(make_gateway, layout, redis_url):
    gateway = make_gateway(event_stream_max_s=1.0)  # each stream drops after a second
    steps = range(1, 7)
    out = io.StringIO()
    with GatewayClient(gateway.url, TOKEN) as client:
        job_id = _submitted(client, layout)
        state = JobState(connect(redis_url))
        state.set_state(job_id, "running")

        def trainer_then_evaluator():  # over ~6 s: the watch outlives several streams
            for step in steps:
                time.sleep(0.5)
                state.emit(job_id, "checkpoint", {"step": step})
            save_checkpoint(layout, job_id, steps[-1])
            state.set_state(job_id, "succeeded", step=steps[-1])
            _await(lambda: "waiting for the evaluation" in out.getvalue())
            served = _streams_served(gateway.url)
            # That stream ends, and the next one (which says "waiting" again) too.
            _await(lambda: _streams_served(gateway.url) >= served + 2)
            write_json_atomic(layout.run(job_id).eval_result(steps[-1]), {
                "job_id": job_id, "step": steps[-1], "accuracy": 0.5, "recall_at_5": 1.0,
                "loss": 0.1, "exported_version": None})
            state.emit(job_id, "eval", {"step": steps[-1], "accuracy": 0.5, "recall_at_5": 1.0,
                                        "loss": 0.1})

        thread = threading.Thread(target=trainer_then_evaluator, daemon=True)
        thread.start()
        code = watch(client, job_id, console=Console(file=out, width=120))
        thread.join(5)
    text = out.getvalue()
    assert code == 0, text
    assert _streams_served(gateway.url) >= 4, "the streams did not drop"  # and ended once more
    lines = [line.strip() for line in text.splitlines()]
    assert [line for line in lines if line.startswith("checkpoint at")] == [
        f"checkpoint at step {step}" for step in steps], text
    for once in ("state: running", "state: succeeded", "evaluated step 6: accuracy 0.500",
                 "training succeeded; waiting for the evaluation of step 6 ..."):
        assert sum(line.startswith(once) for line in lines) == 1, (once, text)


def _await(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _streams_served(url: str) -> int:
    """Event streams the gateway answered with a 2xx, from its Prometheus metrics."""
    metrics = httpx.get(f"{url}/metrics").text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in metrics.splitlines()
               if line.startswith("http_requests_total{") and "/events" in line and '"2xx"' in line)
