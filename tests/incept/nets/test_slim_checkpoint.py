"""load_slim_checkpoint on the tiny net: a real V2 checkpoint written under
slim's names, read back with tf.train.load_checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

import incept.nets as nets
from incept.errors import UserError
from incept.nets.slim_checkpoint import SlimCheckpointError

HEADS = ("TinyNet/Logits", "TinyNet/AuxLogits/Aux_logits")


def _shapes(model):
    return {name: tuple(var.shape) for name, var in nets.slim_variables(model).items()}


def _values(model):
    return {name: np.array(var.numpy()) for name, var in nets.slim_variables(model).items()}


def test_every_variable_lands_in_its_layer(tmp_path, write_slim_checkpoint, slim_values):
    model = nets.build("tiny", 5)
    values = slim_values(_shapes(model), seed=1)
    extras = {
        "global_step": np.array(1234, np.int64),
        "TinyNet/Logits/Logits/weights/ExponentialMovingAverage": values["TinyNet/Logits/Logits/weights"] + 1,
        "TinyNet/Conv2d_1a_3x3/weights/Adam": np.zeros((3, 3, 3, 8), np.float32),
    }
    prefix = write_slim_checkpoint(tmp_path / "model.ckpt", {**values, **extras})

    report = nets.load_slim_checkpoint(model, prefix)

    assert sorted(report.loaded) == sorted(values)
    assert sorted(report.skipped) == sorted(extras)
    assert report.missing == () and report.excluded == ()
    # Look every layer up by its own name and attribute, not through slim_variables.
    for name, value in values.items():
        parts = name.split("/")
        layer = model.get_layer(".".join(parts[1:-1]))
        attribute = {"weights": "kernel", "biases": "bias"}.get(parts[-1], parts[-1])
        np.testing.assert_array_equal(getattr(layer, attribute).numpy(), value, err_msg=name)


def test_exclude_scopes_keep_the_heads_for_fine_tuning(tmp_path, write_slim_checkpoint, slim_values):
    # The recipe: a 1001-class checkpoint into a 5-class model, heads excluded.
    source = nets.build("tiny", 1001)
    values = slim_values(_shapes(source), seed=2)
    prefix = write_slim_checkpoint(tmp_path / "model.ckpt", values)
    model = nets.build("tiny", 5)
    before = _values(model)

    report = nets.load_slim_checkpoint(model, prefix, exclude_scopes=",".join(HEADS))

    head_names = sorted(nets.variables_under(model, HEADS))
    assert sorted(report.excluded) == head_names
    assert sorted(report.skipped) == head_names  # same names, the checkpoint's 1001-class versions
    after = _values(model)
    for name in head_names:
        np.testing.assert_array_equal(after[name], before[name])
    for name in report.loaded:
        np.testing.assert_array_equal(after[name], values[name])
    assert len(report.loaded) + len(head_names) == len(after)


def test_shape_mismatch_names_the_variable_and_loads_nothing(tmp_path, write_slim_checkpoint, slim_values):
    source = nets.build("tiny", 1001)
    prefix = write_slim_checkpoint(tmp_path / "model.ckpt", slim_values(_shapes(source)))
    model = nets.build("tiny", 5)
    before = _values(model)

    with pytest.raises(SlimCheckpointError, match=r"TinyNet/AuxLogits/Aux_logits/biases.*\[1001\].*\[5\]"):
        nets.load_slim_checkpoint(model, prefix)
    # Only the aux head is excluded: the main head still mismatches.
    with pytest.raises(UserError, match="TinyNet/Logits/Logits/biases"):
        nets.load_slim_checkpoint(model, prefix, exclude_scopes=["TinyNet/AuxLogits"])

    for name, value in _values(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"{name} changed by a failed load")


def test_missing_variable_is_an_error_unless_ignored(tmp_path, write_slim_checkpoint, slim_values):
    model = nets.build("tiny", 5)
    values = slim_values(_shapes(model), seed=3)
    gone = "TinyNet/Conv2d_4a_3x3/BatchNorm/moving_variance"
    prefix = write_slim_checkpoint(tmp_path / "model.ckpt", {n: v for n, v in values.items() if n != gone})
    before = _values(model)

    with pytest.raises(SlimCheckpointError, match=f"not in checkpoint.*{gone}"):
        nets.load_slim_checkpoint(model, prefix)
    np.testing.assert_array_equal(_values(model)["TinyNet/Conv2d_1a_3x3/weights"],
                                  before["TinyNet/Conv2d_1a_3x3/weights"])

    report = nets.load_slim_checkpoint(model, prefix, ignore_missing=True)
    assert report.missing == (gone,)
    assert len(report.loaded) == len(values) - 1
    np.testing.assert_array_equal(_values(model)[gone], before[gone])
    np.testing.assert_array_equal(_values(model)["TinyNet/Conv2d_1a_3x3/weights"],
                                  values["TinyNet/Conv2d_1a_3x3/weights"])


def test_wrong_architecture_or_unreadable_checkpoint(tmp_path, write_slim_checkpoint, slim_values):
    model = nets.build("tiny", 5)
    other = write_slim_checkpoint(tmp_path / "other.ckpt",
                                  {"InceptionV4/Conv2d_1a_3x3/weights": np.zeros((3, 3, 3, 32), np.float32)})
    with pytest.raises(SlimCheckpointError, match="not in checkpoint"):
        nets.load_slim_checkpoint(model, other)
    with pytest.raises(SlimCheckpointError, match="nothing loaded"):
        nets.load_slim_checkpoint(model, other, ignore_missing=True)
    with pytest.raises(SlimCheckpointError, match="cannot read checkpoint"):
        nets.load_slim_checkpoint(model, tmp_path / "no-such.ckpt")
    (tmp_path / "junk.ckpt.index").write_bytes(b"not a checkpoint")
    with pytest.raises(SlimCheckpointError, match="cannot read checkpoint"):
        nets.load_slim_checkpoint(model, tmp_path / "junk.ckpt")


def test_a_net_without_aux_head_skips_the_checkpoints_aux_variables(tmp_path, write_slim_checkpoint,
                                                                     slim_values):
    values = slim_values(_shapes(nets.build("tiny", 5)), seed=4)
    prefix = write_slim_checkpoint(tmp_path / "model.ckpt", values)
    model = nets.build("tiny", 5, aux_logits=False)

    report = nets.load_slim_checkpoint(model, prefix)

    aux = sorted(n for n in values if n.startswith("TinyNet/AuxLogits/"))
    assert aux and sorted(report.skipped) == aux
    assert sorted(report.loaded) == sorted(set(values) - set(aux))
    assert report.summary().startswith("loaded 18 variables, skipped 6 checkpoint entries")
