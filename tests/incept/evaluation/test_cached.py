"""A head-only job evaluated on cached features gives what full forward passes
give: the same validation outputs and metrics, the same open-set fit and
calibration (to the float16 rounding of the cache); a missing cache is computed
once by the evaluator and stored as the trainer stores it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from helpers_training import TINY_HEADS, make_dataset, make_run  # noqa: E402


@pytest.fixture
def trained(layout):
    from incept.training.trainer import train

    make_dataset(layout)
    run, _ = make_run(layout, "cachedjob", trainable_scopes=TINY_HEADS, augment=False,
                      max_steps=40, checkpoint_every_steps=20, moving_average_decay=0.99,
                      learning_rate=0.05)
    assert train("cachedjob", layout).path == "head_only"
    return run


def _forward(layout, run, step):
    """Metrics and open-set fit of the checkpoint through the whole model."""
    from incept.checkpoints import restore_for_inference
    from incept.evaluation.metrics import classification_metrics, run_split
    from incept.evaluation.open_set import fit_open_set

    restored = restore_for_inference(run, step, layout=layout)
    dataset_dir, size = restored.spec.dataset_dir(layout), restored.spec.resolved_image_size()
    validation = run_split(restored.model, dataset_dir, "validation", image_size=size)
    layer, record = fit_open_set(restored.model, dataset_dir, image_size=size,
                                 num_classes=len(restored.class_names), validation=validation)
    metrics = classification_metrics(validation.logits, validation.labels, restored.class_names)
    return validation, metrics, layer, record


def _assert_same(cached, forward):
    (c_out, c_metrics, c_layer, c_record), (f_out, f_metrics, f_layer, f_record) = cached, forward
    np.testing.assert_array_equal(c_out.labels, f_out.labels)
    np.testing.assert_allclose(c_out.pre_logits, f_out.pre_logits, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(c_out.logits, f_out.logits, rtol=1e-2, atol=1e-2)
    for key in ("accuracy", "recall_at_5", "num_images", "confusion_matrix", "per_class"):
        assert c_metrics[key] == f_metrics[key], key
    for key in ("loss", "ece"):
        assert c_metrics[key] == pytest.approx(f_metrics[key], rel=1e-2, abs=1e-3), key
    assert c_record["fitted_on"] == f_record["fitted_on"] > 0
    assert c_record["calibrated_on"] == f_record["calibrated_on"]
    assert c_record["tpr"] == f_record["tpr"]
    assert c_record["threshold"] == pytest.approx(f_record["threshold"], rel=2e-2)
    # The fitted scores agree image by image (the shared precision matrix
    # magnifies the float16 rounding in single parameters, not in the distances).
    np.testing.assert_allclose(c_layer(c_out.logits, c_out.pre_logits).numpy(),
                               f_layer(f_out.logits, f_out.pre_logits).numpy(), rtol=2e-2)


def test_cached_metrics_and_open_set_equal_full_forward_passes(layout, trained):
    from incept.checkpoints import list_checkpoints
    from incept.evaluation.cached import HeadOnlyJob
    from incept.evaluation.metrics import classification_metrics

    job = HeadOnlyJob(layout, trained, layout.dataset("shapes"))
    assert not job.has_features  # read with the first checkpoint (or when prepared)
    job.read_features(compute=False)
    # The trainer cached both splits: nothing left for the evaluator to compute.
    assert job.feature_views == {"cached": 2, "computed": 0}
    assert list_checkpoints(trained) == [20, 40]
    for step in (20, 40):  # one model, restored per checkpoint
        restored, outputs, (layer, record) = job.evaluate(step)
        assert restored.step == step and restored.ema_applied
        metrics = classification_metrics(outputs.logits, outputs.labels, restored.class_names)
        _assert_same((outputs, metrics, layer, record), _forward(layout, trained, step))


def test_missing_cache_is_computed_once_and_stored_like_the_trainers(layout, trained):
    from incept.evaluation.cached import HeadOnlyJob
    from incept.training.features import NotCached

    entries = {p.relative_to(layout.feature_cache): np.load(p)
               for p in layout.feature_cache.rglob("*.npy")}
    assert len(entries) == 4  # pre_logits + aux_pre_logits, training and validation split
    shutil.rmtree(layout.feature_cache)  # evicted, or another machine

    job = HeadOnlyJob(layout, trained, layout.dataset("shapes"))
    with pytest.raises(NotCached):
        job.read_features(compute=False)
    job.evaluate(20)  # computes them with the backbone of the job's checkpoint
    assert job.feature_views == {"cached": 0, "computed": 2}
    again = {p.relative_to(layout.feature_cache): np.load(p)
             for p in layout.feature_cache.rglob("*.npy")}
    assert again.keys() == entries.keys()
    for name, value in entries.items():
        np.testing.assert_array_equal(again[name], value)
    again_job = HeadOnlyJob(layout, trained, layout.dataset("shapes"))
    again_job.read_features(compute=False)
    assert again_job.feature_views == {"cached": 2, "computed": 0}
