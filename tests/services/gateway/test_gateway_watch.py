"""``incept watch`` (incept.console.watch) against the served gateway
with a real Redis: it follows the event stream past the end of training until
the last checkpoint's evaluation arrives and the gateway ends the stream."""

from __future__ import annotations

import io
import threading
import time

from rich.console import Console

from incept.client import GatewayClient
from incept.console import watch
from incept.fsutil import write_json_atomic
from incept.jobstate import JobState
from incept.queues import connect
from tests.services.gateway.conftest import TOKEN, save_checkpoint

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
