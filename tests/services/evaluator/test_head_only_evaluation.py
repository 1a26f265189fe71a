"""The evaluator on a head-only job the real trainer ran: every checkpoint
evaluated from the cached features (the backbone never runs again), the
export's cost in the record, and the job's phases in Redis, moving forward
only, up to "exported" once the last checkpoint is evaluated."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tensorflow as tf

sys.path.insert(0, str(Path(__file__).parents[2] / "incept" / "training"))
from evaluator_helpers import validation_images  # noqa: E402
from helpers_training import TINY_HEADS, make_dataset, make_run  # noqa: E402


def test_head_only_job_is_evaluated_on_cached_features(layout, redis_conn, redis_url):
    from incept.jobstate import PHASES, JobState
    from incept.queues import is_pending, request_id
    from incept.training.trainer import train
    from services.evaluator.evaluate import evaluate_checkpoint, prepare_head_only

    make_dataset(layout)
    run, _ = make_run(layout, "heads", trainable_scopes=TINY_HEADS, augment=False, max_steps=60,
                      checkpoint_every_steps=20, learning_rate=0.05)
    JobState(redis_conn).create("heads")
    assert JobState(redis_conn).get("heads")["phase"] == "queued"
    # As the trainer asks when its feature pass starts: model and export, no features yet.
    early = prepare_head_only(layout, "heads")
    assert early["status"] == "prepared" and early["features"] is False
    assert train("heads", layout, redis_url=redis_url).path == "head_only"
    state = JobState(redis_conn)
    assert state.get("heads")["phase"] == "evaluating"
    status = json.loads(run.status.read_text())
    assert status["phase"] == "evaluating"
    assert status["features"]["done"] == status["features"]["total"] == 72  # both splits, once

    # The trainer asked an evaluator to get ready (queued on `eval`, no worker here).
    assert is_pending(redis_conn, request_id("prepare", "heads"))
    # ... and when it ends: then the features are read and the open-set score fitted.
    assert prepare_head_only(layout, "heads")["features"] is True
    results = []
    for step in (20, 40, 60):
        assert evaluate_checkpoint(layout, redis_conn, "heads", step).status == "evaluated"
        results.append(json.loads(run.eval_result(step).read_text()))
    for step, result in zip((20, 40, 60), results, strict=True):
        assert result["features"] == "cached"
        # The gallery's per-image record, from the cached features, matches the metrics.
        per_image = json.loads(run.eval_images(step).read_text())["images"]
        assert len(per_image) == result["num_images"] == 18
        assert sum(i["predicted"] == i["label"] for i in per_image) / 18 == result["accuracy"]
        assert len({i["file"] for i in per_image}) == 18
        assert result["feature_views"] == {"cached": 2, "computed": 0}
        assert result["ood"]["fitted_on"] == 54 and result["ood"]["calibrated_on"] == 18
    exported = [r for r in results if r["exported_version"] is not None]
    assert exported and all(set(r["export_s"]) == {"trace", "save", "fsync", "total"}
                            for r in exported)

    # Each version, written from the function traced ahead, holds its own checkpoint's heads.
    images, labels = validation_images(layout.dataset("shapes"))
    for result in exported:
        path = layout.model(result["served_model"]) / str(result["exported_version"])
        out = tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.constant(images))
        assert float((out["classes"].numpy()[:, 0] == labels).mean()) == result["accuracy"]

    assert state.get("heads")["phase"] == "exported"
    events = state.events("heads")
    phases = [data["phase"] for _, kind, data in events if kind == "phase"]
    assert ["queued", *phases] == ["queued", "features", "training", "evaluating", "exported"] == list(PHASES)
    features = [data for _, kind, data in events if kind == "features"]
    assert features[0]["done"] == 0 and features[-1]["done"] == features[-1]["total"] == 72
    assert {"images_per_sec", "eta_s"} <= set(features[-1])
