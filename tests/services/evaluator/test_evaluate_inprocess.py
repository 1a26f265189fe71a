"""The evaluation pipeline in this process: real TensorFlow, real Redis, real
files. (The worker-process tests are in test_evaluator_worker.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from evaluator_helpers import RunWriter, make_dataset, validation_images

from incept.data.dataset import DatasetInfo
from incept.evaluation.open_set import DEFAULT_SCORE
from incept.export import read_manifest
from incept.jobstate import JobState
from incept.layout import list_versions
from services.evaluator.evaluate import EvaluationFailed, evaluate_checkpoint


@pytest.fixture
def dataset(layout, tmp_path):
    return make_dataset(layout, tmp_path)


def test_evaluate_bless_export_and_duplicate(layout, redis_conn, dataset):
    writer = RunWriter(layout, "job1")
    writer.train(30)
    step = writer.save()

    outcome = evaluate_checkpoint(layout, redis_conn, "job1", step)
    assert outcome.status == "evaluated"
    result = json.loads(writer.run.eval_result(step).read_text())
    info = DatasetInfo.load(dataset)
    # Every validation image exactly once.
    assert result["num_images"] == info.count("validation") == 9
    assert sum(map(sum, result["confusion_matrix"])) == 9
    assert set(result["per_class"]) == set(info.class_names)
    assert result["blessed"] and result["exported_version"] == 1
    assert result["ood"]["score_name"] and result["ood"]["tpr"] >= 0.95
    for key in ("accuracy", "recall_at_5", "loss", "ece", "evaluated_at", "class_names", "ema"):
        assert key in result

    state = JobState(redis_conn).get("job1")
    assert state["latest_eval"] == {"step": step, "accuracy": result["accuracy"],
                                    "recall_at_5": result["recall_at_5"], "loss": result["loss"]}
    assert state["best"] == {"step": step, "accuracy": result["accuracy"], "loss": result["loss"]}
    assert state["exported_versions"] == [1] and state["served_model"] == "flowers"
    kinds = [k for _, k, _ in JobState(redis_conn).events("job1")]
    assert kinds == ["eval", "export"]
    assert list(writer.run.eval_dir.glob("events.out.tfevents.*"))

    # The blessed export predicts what the evaluator computed in-process.
    model_dir = layout.model("flowers") / "1"
    manifest = read_manifest(model_dir)
    assert (manifest["job_id"], manifest["step"]) == ("job1", step)
    assert manifest["dataset_fingerprint"] == info.fingerprint
    images, labels = validation_images(dataset)
    sig = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    out = sig(images=tf.constant(images))
    predicted = out["classes"].numpy()[:, 0]
    assert float((predicted == labels).mean()) == pytest.approx(result["accuracy"])
    # The calibration keeps 95 % of the validation images known.
    assert np.mean(~out["is_unknown"].numpy()) >= 0.95

    # Every validation image's outcome, for the page's gallery: it agrees with the
    # confusion matrix and with the export, and points at the dataset's thumbnails.
    from incept.layout import thumbnail_file

    per_image = json.loads(writer.run.eval_images(step).read_text())["images"]
    assert len(per_image) == 9 and len({i["file"] for i in per_image}) == 9
    confusion = np.zeros_like(np.array(result["confusion_matrix"]))
    for i in per_image:
        confusion[i["label"], i["predicted"]] += 1
        assert i["loss"] >= 0 and 0 < i["score"] <= 1 and i["ood_score"] is not None
    assert confusion.tolist() == result["confusion_matrix"]
    assert np.mean([i["label"] == i["predicted"] for i in per_image]) == pytest.approx(result["accuracy"])
    assert np.mean([i["loss"] for i in per_image]) == pytest.approx(result["loss"], rel=1e-4)
    assert np.mean([i["ood_score"] > result["ood"]["threshold"] for i in per_image]) <= 0.05
    assert all(thumbnail_file(dataset, i["thumbnail"]).is_file() for i in per_image)

    # A duplicate request is a no-op: same result file, no new version, no new event.
    before = writer.run.eval_result(step).read_bytes()
    again = evaluate_checkpoint(layout, redis_conn, "job1", step)
    assert again.status == "already_done"
    assert writer.run.eval_result(step).read_bytes() == before
    assert list_versions(layout.model("flowers")) == [1]
    assert len(JobState(redis_conn).events("job1")) == 2


def test_not_better_is_not_exported(layout, redis_conn, dataset):
    writer = RunWriter(layout, "job2", bless_threshold=1.0)
    step = writer.save(5)
    evaluate_checkpoint(layout, redis_conn, "job2", step)
    result = json.loads(writer.run.eval_result(step).read_text())
    assert not result["blessed"] and result["exported_version"] is None
    assert "bless_threshold" in result["bless_reason"]
    # The open-set calibration is recorded for every checkpoint, blessed or not.
    assert result["ood"]["score_name"] == DEFAULT_SCORE and result["ood"]["tpr"] >= 0.95
    assert result["ood"]["calibrated_on"] == result["num_images"]
    assert list_versions(layout.model("flowers")) == []


def test_truncated_checkpoint_is_reported(layout, redis_conn, dataset):
    writer = RunWriter(layout, "job3")
    step = writer.save(3)
    data = next(writer.run.checkpoints.glob(f"ckpt-{step}.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(EvaluationFailed, match="unreadable"):
        evaluate_checkpoint(layout, redis_conn, "job3", step)
    assert not writer.run.eval_result(step).exists()
    record = json.loads((writer.run.eval_dir / f"{step}.error.json").read_text())
    assert "unreadable" in record["error"]
    state = JobState(redis_conn).get("job3")
    assert state["eval_error"]["step"] == step and "unreadable" in state["eval_error"]["error"]
    events = JobState(redis_conn).events("job3")
    assert [(k, d["source"]) for _, k, d in events] == [("error", "evaluator")]


def test_deleted_checkpoint_is_reported(layout, redis_conn, dataset):
    RunWriter(layout, "job4")
    with pytest.raises(EvaluationFailed, match="no complete checkpoint at step 7"):
        evaluate_checkpoint(layout, redis_conn, "job4", 7)


def test_a_served_model_only_gets_better(layout, redis_conn, dataset, tmp_path):
    """Another job's checkpoint replaces the served version only when it beats it
    (same dataset and class list), and one trained on other data only with
    replace: true; each version's manifest says why it was exported."""
    first = RunWriter(layout, "first")
    first.train(30)
    step = first.save()
    evaluate_checkpoint(layout, redis_conn, "first", step)
    assert list_versions(layout.model("flowers")) == [1]
    manifest = read_manifest(layout.model("flowers") / "1")
    assert manifest["export_reason"] == "first evaluated checkpoint of the job; no version served yet"

    # A new job whose first checkpoint is exactly as good: the job's own first, not better.
    same = RunWriter(layout, "same")
    same.model.set_weights(first.model.get_weights())
    evaluate_checkpoint(layout, redis_conn, "same", same.save(step))
    result = json.loads(same.run.eval_result(step).read_text())
    assert not result["blessed"] and result["exported_version"] is None
    assert "does not beat served version 1" in result["bless_reason"]
    assert list_versions(layout.model("flowers")) == [1]

    # Trained on another dataset (other images, other classes), served under the same name.
    make_dataset(layout, tmp_path, name="other", num_classes=4)
    other = RunWriter(layout, "other", dataset="other", served_model_name="flowers")
    evaluate_checkpoint(layout, redis_conn, "other", other.save(1))
    result = json.loads(other.run.eval_result(1).read_text())
    assert not result["blessed"] and "set replace: true" in result["bless_reason"]
    assert list_versions(layout.model("flowers")) == [1]
    replacing = RunWriter(layout, "replacing", dataset="other", served_model_name="flowers",
                          replace=True)
    evaluate_checkpoint(layout, redis_conn, "replacing", replacing.save(1))
    assert list_versions(layout.model("flowers")) == [1, 2]
    manifest = read_manifest(layout.model("flowers") / "2")
    assert manifest["job_id"] == "replacing"
    assert "replaces served version 1" in manifest["export_reason"]
