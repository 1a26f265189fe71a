"""incept.checkpoints: layout, completeness, EMA restore, errors (real TF)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from incept.checkpoints import (
    CheckpointError,
    WeightAverages,
    build_model,
    checkpoint_prefix,
    class_names_path,
    list_checkpoints,
    make_checkpoint,
    make_manager,
    restore_for_inference,
    trainable_variables_by_name,
)
from incept.spec import parse_spec

CLASSES = ["a", "b", "c"]


def _run(layout, decay=0.9):
    spec = parse_spec({"dataset": "ds", "model_name": "tiny", "max_steps": 10,
                       "moving_average_decay": decay,
                       "trainable_scopes": ["TinyNet/Logits", "TinyNet/AuxLogits/Aux_logits"]})
    run = layout.run("job1")
    run.root.mkdir(parents=True)
    run.spec.write_text(spec.model_dump_json())
    class_names_path(run).write_text(json.dumps(CLASSES))
    return run, spec


def _train_state(spec):
    model = build_model(spec, len(CLASSES))
    variables = trainable_variables_by_name(model, spec.trainable_scopes)
    ema = WeightAverages(variables, spec.moving_average_decay)
    step = tf.Variable(0, dtype=tf.int64)
    return model, variables, ema, step


def test_trainable_variables_follow_the_scopes(layout):
    _run_, spec = _run(layout)
    model = build_model(spec, 3)
    names = sorted(trainable_variables_by_name(model, spec.trainable_scopes))
    assert names == ["TinyNet/AuxLogits/Aux_logits/biases", "TinyNet/AuxLogits/Aux_logits/weights",
                     "TinyNet/Logits/Logits/biases", "TinyNet/Logits/Logits/weights"]


def test_ema_warm_up_follows_num_updates():
    var = tf.Variable([0.0])
    ema = WeightAverages({"v": var}, 0.9999)
    var.assign([1.0])
    ema.update(0)  # decay = min(0.9999, 1/10) = 0.1
    np.testing.assert_allclose(ema.averages["v"].numpy(), [0.9], rtol=1e-6)
    assert float(ema.effective_decay(10**6)) == pytest.approx(0.9999)


def test_save_list_and_restore_with_ema(layout):
    run, spec = _run(layout)
    model, variables, ema, step = _train_state(spec)
    manager = make_manager(make_checkpoint(model, step=step, ema=ema), run.checkpoints, keep=3)
    kernel = variables["TinyNet/Logits/Logits/weights"]
    for s in (5, 10):
        kernel.assign(kernel + 1.0)
        ema.update(s)
        step.assign(s)
        manager.save(checkpoint_number=s)
    assert (run.checkpoints / "ckpt-10.index").exists()
    assert list_checkpoints(run) == [5, 10]

    restored = restore_for_inference(run, layout=layout)
    assert restored.step == 10 and restored.ema_applied and restored.class_names == CLASSES
    got = restored.model.get_layer("Logits.Logits").kernel.numpy()
    np.testing.assert_allclose(got, ema.averages["TinyNet/Logits/Logits/weights"].numpy(), rtol=1e-6)
    assert not np.allclose(got, kernel.numpy())
    # Frozen variables come back as saved.
    np.testing.assert_allclose(restored.model.get_layer("Conv2d_1a_3x3").kernel.numpy(),
                               model.get_layer("Conv2d_1a_3x3").kernel.numpy())

    older = restore_for_inference(run, step=5, layout=layout)
    assert older.step == 5


def test_partial_and_corrupt_checkpoints_are_refused(layout):
    run, spec = _run(layout)
    model, _variables, ema, step = _train_state(spec)
    manager = make_manager(make_checkpoint(model, step=step, ema=ema), run.checkpoints, keep=5)
    for s in (1, 2, 3):
        manager.save(checkpoint_number=s)
    # A checkpoint whose data shard is missing is not complete.
    for shard in run.checkpoints.glob("ckpt-3.data-*"):
        shard.unlink()
    assert list_checkpoints(run) == [1, 2]
    with pytest.raises(CheckpointError, match="no complete checkpoint at step 3"):
        restore_for_inference(run, step=3, layout=layout)
    # A damaged one is listed but refused with a clear error.
    data = next(run.checkpoints.glob("ckpt-2.data-*"))
    data.write_bytes(data.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="ckpt-2"):
        restore_for_inference(run, step=2, layout=layout)
    assert restore_for_inference(run, step=1, layout=layout).step == 1
    assert checkpoint_prefix(run, 1).name == "ckpt-1"


def test_run_without_checkpoints(layout):
    run, _spec = _run(layout)
    assert list_checkpoints(run) == []
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        restore_for_inference(run, layout=layout)
