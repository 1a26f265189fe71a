"""The trainer in-process with the tiny net on generated images (real TF, real Redis)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, str(Path(__file__).parent))
from helpers_training import TINY_HEADS, make_dataset, make_run, validation_accuracy  # noqa: E402

FAST = {"learning_rate": 0.05, "opt_epsilon": 1e-3}


@pytest.fixture
def data(layout):
    make_dataset(layout)
    return layout


def test_job_learns_checkpoints_and_one_eval_request_each(data, redis_conn, redis_url):

    from incept.checkpoints import list_checkpoints
    from incept.jobstate import JobState
    from incept.queues import eval_request_id, rq_queue
    from incept.training.trainer import train

    run, _ = make_run(data, "learn", max_steps=80, augment=False, **FAST)
    result = train("learn", data, redis_url=redis_url, progress_interval_s=0.2)
    assert result.state == "succeeded" and result.path == "full"
    assert list_checkpoints(run) == [20, 40, 60, 80]
    accuracy, _ = validation_accuracy(data, run)
    assert accuracy >= 0.8  # chance is 1/3
    assert sorted(rq_queue(redis_conn, "eval").job_ids) == sorted(
        eval_request_id("learn", s) for s in (20, 40, 60, 80))
    state = JobState(redis_conn)
    job = state.get("learn")
    assert job["state"] == "succeeded" and job["step"] == 80 and job["last_checkpoint_step"] == 80
    kinds = [k for _, k, _ in state.events("learn")]
    assert kinds.count("checkpoint") == 4 and "progress" in kinds and kinds[-1] == "state"
    status = json.loads(run.status.read_text())
    assert status["state"] == "succeeded" and status["step"] == 80
    assert list(run.train_logs.glob("events.out.tfevents.*"))


def test_head_only_path_matches_full_path_and_reuses_the_cache(data):
    from incept.checkpoints import restore_for_inference
    from incept.training.trainer import train

    common = dict(trainable_scopes=TINY_HEADS, augment=False, dropout_keep_prob=1.0,
                  batch_size=18, max_steps=30, checkpoint_every_steps=None, optimizer="sgd",
                  learning_rate=0.1)
    run_full, _ = make_run(data, "viafull", **common)
    run_head, _ = make_run(data, "viahead", **common)
    assert train("viafull", data, path="full").path == "full"
    assert train("viahead", data).path == "head_only"
    full = restore_for_inference(run_full, layout=data).model
    head = restore_for_inference(run_head, layout=data).model
    for name in ("Logits.Logits", "AuxLogits.Aux_logits"):
        for a, b in zip(full.get_layer(name).weights, head.get_layer(name).weights, strict=True):
            # Equal up to the float16 rounding of the cached features.
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-2)
    # The backbone stayed frozen in both.
    np.testing.assert_array_equal(full.get_layer("Conv2d_1a_3x3").kernel.numpy(),
                                  head.get_layer("Conv2d_1a_3x3").kernel.numpy())
    # Both show their first training photos in TensorBoard (the head-only path after its
    # loop, so they do not delay its first checkpoint).
    for run in (run_full, run_head):
        events = EventAccumulator(str(run.train_logs), size_guidance={"tensors": 0})
        events.Reload()
        assert "inputs" in events.Tags()["tensors"], run.job_id
    acc_full, _ = validation_accuracy(data, run_full)
    acc_head, _ = validation_accuracy(data, run_head)
    assert abs(acc_full - acc_head) <= 0.05
    # A later job on the same images reuses the cached features.
    make_run(data, "viahead2", **common)
    # One entry per split: the training split's view and the validation split's.
    cached = list(data.feature_cache.rglob("pre_logits.npy"))
    assert len(cached) == 2
    mtimes = [c.stat().st_mtime_ns for c in cached]
    train("viahead2", data)
    assert [c.stat().st_mtime_ns for c in cached] == mtimes


def test_cancel_flag_stops_with_a_final_checkpoint(data, redis_conn, redis_url):
    from incept.checkpoints import list_checkpoints
    from incept.jobstate import JobState
    from incept.training.trainer import train

    run, _ = make_run(data, "cancelme", max_steps=100000, checkpoint_every_steps=None)
    JobState(redis_conn).request_cancel("cancelme")
    result = train("cancelme", data, redis_url=redis_url)
    assert result.state == "cancelled" and result.step < 100000
    assert list_checkpoints(run) == [result.step]
    assert JobState(redis_conn).get("cancelme")["state"] == "cancelled"


def test_corrupt_newest_checkpoint_falls_back_loudly(data, caplog):
    from incept.checkpoints import list_checkpoints
    from incept.training.trainer import train

    run, _ = make_run(data, "resume", max_steps=40)
    train("resume", data)
    assert list_checkpoints(run) == [20, 40]
    shard = next(run.checkpoints.glob("ckpt-40.data-*"))
    shard.write_bytes(shard.read_bytes()[:64])
    make_run(data, "resume", max_steps=50)
    result = train("resume", data)
    assert result.resumed_from == 20 and result.step == 50
    assert "ckpt-40" in caplog.text and "CORRUPT" in caplog.text


def test_invalid_job_is_refused_before_training(data):
    from incept.errors import UserError
    from incept.training.trainer import train

    run, _ = make_run(data, "toobig", batch_size=4096)
    with pytest.raises(UserError, match="fewer than batch_size"):
        train("toobig", data)
    status = json.loads(run.status.read_text())
    assert status["state"] == "failed" and "fewer than batch_size" in status["error"]


def test_augmented_views_ema_and_mixed_precision(data):
    import keras

    from incept.checkpoints import restore_for_inference
    from incept.training.trainer import train

    run, _ = make_run(data, "views", trainable_scopes=TINY_HEADS, augmented_views=3,
                      moving_average_decay=0.99, mixed_precision=True, max_steps=30, **FAST)
    result = train("views", data)
    assert result.path == "head_only" and result.step == 30
    # Three augmented views of the training split, the evaluation view of the validation split.
    assert sorted(p.parent.name.rsplit("-", 1)[1] for p in data.feature_cache.rglob("pre_logits.npy")) == [
        "view0", "view1", "view2", "view3"]
    assert keras.mixed_precision.global_policy().name == "float32"  # not leaked
    restored = restore_for_inference(run, layout=data)
    assert restored.ema_applied and restored.step == 30


def test_training_from_a_base_checkpoint_excludes_the_heads(data, tmp_path):
    """slim's recipe: the backbone comes from a checkpoint, the excluded heads start fresh."""
    from incept.checkpoints import restore_for_inference
    from incept.nets import build, slim_variables

    source = build("tiny", 7, image_size=32)  # another task: 7 classes
    prefix = data.pretrained / "tiny" / "tiny.ckpt"
    _save_slim(slim_variables(source), prefix)

    # A relative path is looked up under the data root, then under pretrained/.
    run, _ = make_run(data, "based", checkpoint="tiny/tiny.ckpt", exclude_scopes=TINY_HEADS,
                      trainable_scopes=TINY_HEADS, max_steps=10)
    from incept.training.trainer import train

    train("based", data)
    model = restore_for_inference(run, layout=data).model
    np.testing.assert_array_equal(model.get_layer("Conv2d_1a_3x3").kernel.numpy(),
                                  source.get_layer("Conv2d_1a_3x3").kernel.numpy())


def test_base_checkpoint_outside_the_data_root_is_refused_in_the_trainer(data, tmp_path):
    """The spec on the volume is not trusted: the trainer confines the checkpoint
    again, and its error tells nothing about files outside the data root."""
    from incept.errors import UserError
    from incept.training.trainer import train

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.index").write_bytes(b"")  # '../../x' used to skip the check
    (data.pretrained / "leak.index").symlink_to(outside / "secret.index")
    rel = "../" * len(data.root.relative_to(tmp_path).parts) + "outside/secret"
    errors = []
    for i, value in enumerate([rel, str(outside / "secret"), "/etc/hostname", "/no/such/file", "leak"]):
        run, _ = make_run(data, f"escape{i}", checkpoint=value)
        with pytest.raises(UserError, match="is not inside the data root") as e:
            train(f"escape{i}", data)
        errors.append(str(e.value).replace(repr(value), "PATH"))
        assert json.loads(run.status.read_text())["state"] == "failed"
        assert not run.checkpoints.exists()
    assert len(set(errors)) == 1, errors  # no existence oracle


def _save_slim(variables, prefix):
    """A checkpoint keyed by slim names, as slim's tf.compat.v1 Saver writes them."""
    import tensorflow as tf

    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = list(variables)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.convert_to_tensor(variables[n]) for n in names])


@pytest.mark.slow
def test_inception_v4_head_only_job(data):
    """The real net's head layers, dropout and aux head on the head-only path."""
    from incept.checkpoints import restore_for_inference
    from incept.training.trainer import train

    heads = ["InceptionV4/Logits", "InceptionV4/AuxLogits/Aux_logits"]
    run, _ = make_run(data, "iv4", model_name="inception_v4", image_size=75, trainable_scopes=heads,
                      moving_average_decay=0.9999, max_steps=4, batch_size=8)
    result = train("iv4", data)
    assert result.path == "head_only" and result.checkpoints[-1] == 4
    for entry in data.feature_cache.rglob("*-view0"):
        pre, aux = np.load(entry / "pre_logits.npy"), np.load(entry / "aux_pre_logits.npy")
        assert pre.shape[1:] == (1536,) and pre.dtype == np.float16
        assert aux.shape[1:] == (768,)
    restored = restore_for_inference(run, layout=data)
    assert restored.ema_applied and restored.model.output["logits"].shape[-1] == 3


def test_unrestorable_checkpoints_stop_the_job_instead_of_being_overwritten(data):
    from incept.checkpoints import list_checkpoints
    from incept.errors import UserError
    from incept.training.trainer import train

    run, _ = make_run(data, "changed", max_steps=20)
    train("changed", data)
    make_run(data, "changed", max_steps=40, optimizer="momentum")  # other optimizer state
    with pytest.raises(UserError, match="can be restored"):
        train("changed", data)
    assert list_checkpoints(run) == [20]
