"""End to end: the whole system as separate real processes on loopback —
``incept up --detach`` starts a real Redis (AOF), the evaluator, a trainer
worker and the gateway; everything below goes over HTTP (or the ``incept`` CLI)
exactly as a user's requests would, with the tiny network on a generated
dataset. Then the faults, each ending with nothing lost.

The tests share one stack and run in file order (a module-scoped fixture): the
pipeline test submits the long job the fault tests act on while it runs, and
the later tests check the end state. A fault test whose job has already
finished submits another one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from incept.client import GatewayClient, GatewayError
from incept.jobstate import TERMINAL_STATES
from incept.stack import StackPaths, read_state

REPO = Path(__file__).resolve().parents[2]
DATASET = "shapes"
SPEC = {
    "dataset": DATASET, "model_name": "tiny", "image_size": 32, "batch_size": 16,
    "max_steps": 4000, "checkpoint_every_steps": 400, "keep_checkpoints": 100,
    "optimizer": "adam", "learning_rate": 0.01, "opt_epsilon": 1e-3, "augment": False,
    "served_model_name": "shapes",
}
WAIT_S = 240.0  # an upper bound for one stage, not a timing assertion


def incept(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "incept.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


@dataclass
class E2E:
    root: Path
    photos: Path
    env: dict
    events: list = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    _client: GatewayClient | None = None

    @property
    def state(self) -> dict:
        return read_state(self.root) or {}

    @property
    def client(self) -> GatewayClient:
        state = self.state
        if self._client is None or self._client.url != state["url"]:
            self._client = GatewayClient(state["url"], state["token"])
        return self._client

    def pid(self, name: str) -> int:
        return self.state["children"][name]["pid"]

    def logs(self, chars: int = 2500) -> str:
        out = []
        for log in sorted(StackPaths(self.root).logs.glob("*.log")):
            out.append(f"---- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    def wait_for(self, what: str, predicate, timeout_s: float = WAIT_S, interval_s: float = 0.2):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = predicate()
            except (GatewayError, OSError, KeyError):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"gave up waiting for {what} after {timeout_s:.0f} s\n{self.logs()}")
            time.sleep(interval_s)

    def job(self, job_id: str) -> dict:
        return self.client.job(job_id)

    def submit(self, **overrides) -> str:
        job_id = self.client.submit({**SPEC, **overrides})["job_id"]
        self.jobs.append(job_id)
        return job_id

    def running_job(self, margin_steps: int = 1500) -> str:
        """A job with at least ``margin_steps`` left to train (submitting one if needed)."""
        for job_id in reversed(self.jobs):
            job = self.job(job_id)
            if job["state"] not in TERMINAL_STATES and \
                    (job.get("step") or 0) < job["max_steps"] - margin_steps:
                break
        else:
            job_id = self.submit()
        self.wait_for(f"{job_id} to train", lambda: (self.job(job_id).get("step") or 0) > 0)
        return job_id

    def redis(self):
        from incept.queues import connect

        return connect(self.state["redis_url"])


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    from incept.data.synthetic import write_class_folders

    tmp = tmp_path_factory.mktemp("e2e")
    photos = tmp / "photos"
    write_class_folders(photos, num_classes=5, per_class=24, size=(40, 40), seed=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCEPT_")}
    env.update({"INCEPT_RECONCILE_INTERVAL_S": "3", "INCEPT_MODEL_POLL_S": "0.5",
                "TF_CPP_MIN_LOG_LEVEL": "2"})
    ctx = E2E(tmp / "data", photos, env)
    up = incept("up", "--detach", "--no-demo", "--port", "0", "--data-root", str(ctx.root), env=env)
    try:
        assert up.returncode == 0, f"incept up failed:\n{up.stdout}\n{up.stderr}\n{ctx.logs()}"
        assert "incept is up at http://127.0.0.1:" in up.stdout
        yield ctx
    finally:
        if ctx._client is not None:
            ctx._client.close()
        if read_state(ctx.root):
            incept("down", "--data-root", str(ctx.root), env=env)


# ---------------------------------------------------------------------------


def test_stack_is_up_healthy_and_protected(e2e):
    state = e2e.state
    assert state["status"] == "ready"
    assert set(state["children"]) == {"evaluator", "trainer", "gateway"}
    for name in state["children"]:
        assert _alive(e2e.pid(name)), name
    assert _alive(state["redis_pid"])
    anonymous = GatewayClient(state["url"])
    assert anonymous.healthy()
    with pytest.raises(GatewayError) as refused:
        anonymous.jobs()
    assert refused.value.status_code == 401
    assert e2e.client.jobs() == []
    # The CLI client finds the local stack's URL and token by itself.
    status = incept("status", "--data-root", str(e2e.root), env=e2e.env)
    assert status.returncode == 0, status.stderr
    # A bad spec is refused before anything is sent, every problem listed, no trace.
    bad = e2e.root.parent / "bad.yaml"
    bad.write_text("dataset: shapes\nmodel_name: nope\nbatch_size: 0\n")
    refused_spec = incept("submit", str(bad), "--data-root", str(e2e.root), env=e2e.env)
    assert refused_spec.returncode == 2
    assert "model_name" in refused_spec.stderr and "batch_size" in refused_spec.stderr
    assert "Traceback" not in refused_spec.stderr


def test_pipeline_over_http(e2e, tmp_path):
    import tarfile

    from incept.console import evaluations_of

    # Upload the generated photos as a user would, and wait for the conversion.
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for class_dir in sorted(e2e.photos.iterdir()):
            tar.add(class_dir, arcname=class_dir.name)
    e2e.client.upload_dataset(DATASET, archive)
    info = e2e.wait_for("the dataset conversion",
                        lambda: (d := e2e.client.dataset(DATASET)) and d["state"] == "ready" and d)
    class_names = sorted(p.name for p in e2e.photos.iterdir())
    assert info["class_names"] == class_names

    # Submit with the CLI client.
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(SPEC))
    submitted = incept("submit", str(spec_file), "--data-root", str(e2e.root), env=e2e.env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    e2e.jobs.append(job_id)

    # Follow the live event stream for the whole run (through every fault below).
    def follow():
        with contextlib.suppress(GatewayError):
            for event in GatewayClient(e2e.state["url"], e2e.state["token"]).events(
                    job_id, reconnect_s=300):
                e2e.events.append(event)

    threading.Thread(target=follow, daemon=True).start()

    job = e2e.wait_for("two evaluated checkpoints and an exported version", lambda: (
        (j := e2e.job(job_id)) and len(evaluations_of(j)) >= 2 and j.get("exported_versions") and j))
    assert job["state"] in ("running", "succeeded")
    e2e.wait_for("progress on the live event stream", lambda: any(
        e.type == "progress" and e.data.get("step", 0) > 0 for e in e2e.events))

    # One image of each class through the gateway.
    model = job.get("served_model") or "shapes"
    images = [sorted((e2e.photos / name).iterdir())[0].read_bytes() for name in class_names]
    answer = e2e.wait_for("the exported model to be served", lambda: _predict(e2e, model, images))
    assert answer["model"] == model
    assert answer["version"] in (e2e.job(job_id).get("exported_versions") or [])
    assert len(answer["predictions"]) == len(class_names)
    for prediction in answer["predictions"]:
        labels = [t["label"] for t in prediction["top"]]
        assert set(labels) <= set(class_names) and len(labels) == 5
        scores = [t["score"] for t in prediction["top"]]
        assert scores == sorted(scores, reverse=True) and 0.0 <= scores[-1] <= scores[0] <= 1.0


def _predict(e2e: E2E, model: str, images: list[bytes]) -> dict | None:
    try:
        return e2e.client.predict(model, images)
    except GatewayError as e:
        if e.status_code in (404, 503):  # no version loaded yet
            return None
        raise


def test_trainer_sigterm_then_restart_resumes_at_the_saved_step(e2e):
    job_id = e2e.running_job()
    run = e2e.root / "runs" / job_id
    e2e.wait_for("a first checkpoint", lambda: (e2e.job(job_id).get("last_checkpoint_step") or 0) > 0)
    trainer = e2e.pid("trainer")
    os.kill(trainer, signal.SIGTERM)
    psutil.Process(trainer).wait(90)  # its contract: checkpoint and exit within 30 s

    status = json.loads((run / "status.json").read_text())
    saved = status["last_checkpoint_step"]
    assert status["state"] in ("queued", "running")  # preempted, waiting to resume
    assert (run / "checkpoints" / f"ckpt-{saved}.index").exists()

    # The supervisor starts the trainer again; it resumes from the saved step.
    e2e.wait_for("a new trainer process", lambda: e2e.pid("trainer") != trainer and _alive(e2e.pid("trainer")))
    e2e.wait_for("progress after the restart", lambda: max(_progress_steps(e2e, job_id)) > saved)
    steps = _progress_steps(e2e, job_id)
    assert steps == sorted(set(steps)), steps  # never went back to an earlier step


def test_evaluator_sigkill_mid_evaluation_then_restart(e2e):
    from rq.registry import StartedJobRegistry

    from incept.queues import EVAL_QUEUE, fetch_request, rq_queue

    job_id = e2e.running_job()
    conn = e2e.redis()
    registry = StartedJobRegistry(queue=rq_queue(conn, EVAL_QUEUE))
    started = e2e.wait_for("an evaluation in progress", lambda: registry.get_job_ids(),
                           interval_s=0.005)
    step = fetch_request(conn, started[0]).args[1]
    evaluator = e2e.pid("evaluator")
    os.killpg(evaluator, signal.SIGKILL)
    e2e.wait_for("a new evaluator process",
                 lambda: e2e.pid("evaluator") != evaluator and _alive(e2e.pid("evaluator")))
    assert _alive(e2e.pid("trainer"))
    # The interrupted evaluation is done again (rq retry or the reconciler).
    killed_job = fetch_request(conn, started[0]).args[0]
    e2e.wait_for(f"the result of {killed_job} step {step}",
                 lambda: (e2e.root / "runs" / killed_job / "eval" / f"{step}.json").exists())
    assert job_id in e2e.jobs


def test_redis_stopped_and_started_again_mid_run(e2e):
    job_id = e2e.running_job()
    before = e2e.job(job_id)["step"]
    evaluator = e2e.pid("evaluator")
    redis_pid = e2e.state["redis_pid"]
    os.kill(redis_pid, signal.SIGTERM)
    psutil.Process(redis_pid).wait(30)
    # The supervisor starts it again on the same port from its append-only file.
    e2e.wait_for("Redis back", lambda: e2e.state["redis_pid"] != redis_pid and _alive(e2e.state["redis_pid"]))
    e2e.wait_for("training to go on", lambda: e2e.job(job_id)["step"] > before)
    assert job_id in [j["job_id"] for j in e2e.client.jobs()]
    # The evaluator rode the outage out: the same process, never restarted.
    assert e2e.pid("evaluator") == evaluator and _alive(evaluator)


def test_every_job_finishes_with_each_checkpoint_evaluated_once(e2e):
    from incept.console import evaluations_of
    from incept.jobstate import JobState

    for job_id in e2e.jobs:
        job = e2e.wait_for(f"{job_id} to finish", lambda j=job_id: (
            (x := e2e.job(j))["state"] in TERMINAL_STATES and x), timeout_s=2 * WAIT_S)
        assert job["state"] == "succeeded", job
        assert job["step"] == job["max_steps"]
        ckpt_dir = e2e.root / "runs" / job_id / "checkpoints"
        steps = sorted(int(p.name[len("ckpt-"):-len(".index")]) for p in ckpt_dir.glob("ckpt-*.index"))
        assert len(steps) >= 2 and steps[-1] == job["max_steps"]
        # Every checkpoint gets its result, including those around the faults.
        job = e2e.wait_for(f"every checkpoint of {job_id} evaluated", lambda j=job_id, s=steps: (
            (x := e2e.job(j)) and [e["step"] for e in evaluations_of(x)] == s and x))
        # Results only: not the per-image sidecars (<step>.images.json) or error records.
        results = sorted(int(p.stem) for p in (e2e.root / "runs" / job_id / "eval").glob("*.json")
                         if p.stem.isdigit())
        assert results == steps
        # ... and exactly once on the live stream, including an evaluation that
        # finished while Redis was down (published from its result on disk).
        def eval_steps(j=job_id):
            events = JobState(e2e.redis()).events(j, count=100_000)
            return [data["step"] for _id, kind, data in events if kind == "eval"]

        e2e.wait_for(f"an eval event for every checkpoint of {job_id}",
                     lambda s=steps: set(eval_steps()) == set(s))
        assert sorted(eval_steps()) == steps, eval_steps()
        # Exported, or never better than the version served for "shapes" (a served
        # model only gets better: a later job must beat the earlier job's export).
        reasons = [json.loads(p.read_text()).get("bless_reason", "")
                   for p in (e2e.root / "runs" / job_id / "eval").glob("*.json")
                   if p.stem.isdigit()]
        assert job["exported_versions"] or any("does not beat served version" in r
                                               for r in reasons), reasons
        assert job["best"]["accuracy"] >= 0.6  # chance is 0.2 on this easy set
        # No half-written result anywhere, whatever was killed when.
        assert not [p for p in (e2e.root / "runs" / job_id / "eval").iterdir() if ".tmp" in p.name]
    for version in (e2e.root / "models" / "shapes").iterdir():
        if version.name.isdigit():
            assert (version / "saved_model.pb").exists() and (version / "manifest.json").exists()


def test_gateway_restart_keeps_state_and_history(e2e):
    from incept.jobstate import JobState

    before = {job_id: e2e.job(job_id) for job_id in e2e.jobs}
    listed = e2e.client.jobs()
    events = {job_id: [eid for eid, _kind, _data in JobState(e2e.redis()).events(job_id, count=100_000)]
              for job_id in e2e.jobs}
    gateway = e2e.pid("gateway")
    os.kill(gateway, signal.SIGTERM)
    psutil.Process(gateway).wait(30)
    e2e.wait_for("a new gateway", lambda: e2e.pid("gateway") != gateway and e2e.client.healthy())
    assert e2e.client.jobs() == listed
    for job_id, job in before.items():
        assert e2e.job(job_id) == job
        # The event history is all there: a new client replays it from the start
        # (through the evaluations after training, where the gateway ends the stream).
        replay = list(e2e.client.events(job_id))
        stored = [e.id for e in replay if e.id]
        assert stored[:len(events[job_id])] == events[job_id]
        assert replay[-1].type == "end" and replay[-1].data["state"] == "succeeded"
        assert {"progress", "checkpoint", "eval"} <= {e.type for e in replay}


def test_new_version_exported_during_predictions(e2e):
    model = "shapes"
    job_id = e2e.jobs[0]
    versions_dir = e2e.root / "models" / model
    old = {int(p.name) for p in versions_dir.iterdir() if p.name.isdigit()}
    image = sorted((e2e.photos / "daisy").iterdir())[0].read_bytes()
    answers, failures = [], []
    stop = threading.Event()

    def predict_loop():
        with GatewayClient(e2e.state["url"], e2e.state["token"]) as client:
            while not stop.is_set():
                try:
                    answers.append(client.predict(model, [image]))
                except GatewayError as e:
                    failures.append(str(e))

    threads = [threading.Thread(target=predict_loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        e2e.wait_for("answers before the export", lambda: len(answers) >= 20)
        export = incept("export", "--run", str(e2e.root / "runs" / job_id),
                        "--out", str(versions_dir), "--data-root", str(e2e.root), env=e2e.env)
        assert export.returncode == 0, export.stdout + export.stderr
        new = {int(p.name) for p in versions_dir.iterdir() if p.name.isdigit()} - old
        assert len(new) == 1
        new_version = new.pop()
        e2e.wait_for("the new version to answer",
                     lambda: any(a["version"] == new_version for a in answers[-50:]))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    complete = old | {new_version}
    class_names = sorted(p.name for p in e2e.photos.iterdir())
    for answer in answers:
        assert answer["version"] in complete
        (prediction,) = answer["predictions"]
        assert [t["label"] for t in prediction["top"]] and \
            {t["label"] for t in prediction["top"]} <= set(class_names)
    # Once the new version answers, no older one does.
    first_new = next(i for i, a in enumerate(answers) if a["version"] == new_version)
    assert all(a["version"] == new_version for a in answers[first_new + 8:])


def test_load_benchmark_short_run_has_no_errors(e2e):
    state = e2e.state
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "load.py"), "--url", state["url"], "--token",
         state["token"], "--data-root", str(e2e.root), "--model", "shapes", "--duration", "3",
         "--concurrency", "4"], capture_output=True, text=True, timeout=300, cwd=REPO, env=e2e.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GOAL load_errors 0 == 0 PASS" in result.stdout
    assert "gateway peak memory" in result.stdout


def test_down_then_up_again_resumes_and_keeps_everything(e2e):
    job_id = e2e.submit()
    e2e.wait_for("a checkpoint", lambda: (e2e.job(job_id).get("last_checkpoint_step") or 0) > 0)
    listed = {j["job_id"]: j["state"] for j in e2e.client.jobs()}
    assert listed[job_id] == "running", "the job finished before the stack was stopped"
    state = e2e.state
    pids = [c["pid"] for c in state["children"].values()] + [state["redis_pid"], state["supervisor_pid"]]

    down = incept("down", "--data-root", str(e2e.root), env=e2e.env)
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not _alive(pid)
    assert read_state(e2e.root) is None
    stopped_at = json.loads((e2e.root / "runs" / job_id / "status.json").read_text())["last_checkpoint_step"]

    up = incept("up", "--detach", "--no-demo", "--port", "0", "--data-root", str(e2e.root), env=e2e.env)
    assert up.returncode == 0, up.stdout + up.stderr + e2e.logs()
    for other, other_state in listed.items():
        if other != job_id:
            assert e2e.job(other)["state"] == other_state
    # Follow it live with the CLI client until it ends.
    watch = incept("watch", job_id, "--data-root", str(e2e.root), env=e2e.env, timeout=2 * WAIT_S)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    assert "checkpoint at step" in watch.stdout and "state: succeeded" in watch.stdout
    assert f"evaluated step {SPEC['max_steps']}" in watch.stdout  # it waits for the last result
    job = e2e.job(job_id)
    assert job["state"] == "succeeded" and job["step"] == SPEC["max_steps"]
    # It went on from where it stopped: progress never went back.
    assert 0 < stopped_at < SPEC["max_steps"]
    steps = _progress_steps(e2e, job_id)
    assert steps == sorted(set(steps)) and any(s > stopped_at for s in steps), (stopped_at, steps)


def _progress_steps(e2e: E2E, job_id: str) -> list[int]:
    from incept.jobstate import JobState

    events = JobState(e2e.redis()).events(job_id, count=100_000)
    return [data["step"] for _id, kind, data in events if kind == "progress"]
