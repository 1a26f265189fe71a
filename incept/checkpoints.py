"""Training checkpoints on the shared volume: what is in them, which ones are
complete, and how to get a model back for inference.

Layout: ``tf.train.CheckpointManager`` in ``runs/<job_id>/checkpoints/`` with
prefixes ``ckpt-<step>`` (``ckpt-<step>.index`` + ``ckpt-<step>.data-*``). The
trainer also writes ``runs/<job_id>/class_names.json`` before its first save,
so a checkpoint stays usable after its dataset is gone.

A checkpoint holds one ``tf.train.Checkpoint`` with these children:

``model``
    The Keras model built by :func:`build_model` from the job's spec (same net,
    number of classes, image size), every variable, frozen ones included.
``optimizer``
    The Keras optimizer with its slots and ``iterations``.
``step``
    The global step (int64): the number of optimizer updates so far.
``ema``
    :class:`WeightAverages` when the spec sets ``moving_average_decay``.

EMA design (slim's ``--moving_average_decay``): a checkpointable exponential
moving average of the *trainable* variables, one shadow variable per variable
keyed by its slim name. Frozen variables are not averaged: their average would
equal their value (slim averages them too, to the same effect). After each
update at step ``s`` (updates done before it) the shadows move with

    decay_s = min(decay, (1 + s) / (10 + s))

which is ``tf.train.ExponentialMovingAverage``'s ``num_updates`` warm-up as
slim passes the global step. Without it, 0.9999 would keep the randomly
initialised heads in the average for thousands of steps. Evaluation and export
use the averages (``RestoredModel.ema_applied``); training itself continues
from the raw weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from incept.errors import UserError
from incept.layout import CHECKPOINT_NAME, Layout, RunLayout
from incept.spec import JobSpec, SpecError, parse_spec

log = logging.getLogger(__name__)



class CheckpointError(UserError):
    """A checkpoint that is missing, partly written or unreadable."""


def class_names_path(run: RunLayout) -> Path:
    return run.root / "class_names.json"


def checkpoint_prefix(run: RunLayout, step: int) -> Path:
    return run.checkpoint_prefix(step)


def list_checkpoints(run: RunLayout) -> list[int]:
    """Steps of the complete checkpoints of a run, ascending."""
    return run.complete_checkpoints()


class WeightAverages(tf.Module):
    """Checkpointable EMA of a set of variables, keyed by slim name (see the
    module docstring for the warm-up)."""

    def __init__(self, variables: dict[str, tf.Variable], decay: float):
        super().__init__(name="ema")
        self.decay = float(decay)
        self._sources = dict(variables)
        # Checkpoint keys come from the dict keys; '/' is escaped by TensorFlow.
        self.averages = {
            name: tf.Variable(tf.convert_to_tensor(var), trainable=False, dtype=var.dtype,
                              name=name.replace("/", "_"))
            for name, var in variables.items()
        }

    def effective_decay(self, num_updates: int | tf.Tensor) -> tf.Tensor:
        n = tf.cast(num_updates, tf.float32)
        return tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + n) / (10.0 + n))

    def update(self, num_updates: int | tf.Tensor) -> None:
        """Move every average towards its variable; ``num_updates`` = updates
        done before this one."""
        decay = self.effective_decay(num_updates)
        for name, avg in self.averages.items():
            value = tf.convert_to_tensor(self._sources[name])
            avg.assign_sub((1.0 - tf.cast(decay, avg.dtype)) * (avg - tf.cast(value, avg.dtype)))

    def copy_to_sources(self) -> None:
        """Overwrite the variables with their averages (for inference)."""
        for name, avg in self.averages.items():
            self._sources[name].assign(tf.cast(avg, self._sources[name].dtype))


def trainable_variables_by_name(model: keras.Model,
                                trainable_scopes: Sequence[str]) -> dict[str, tf.Variable]:
    """The variables that train under slim's ``--trainable_scopes`` (empty: all
    trainable ones), by slim name, in the model's order. Batch-norm moving
    statistics never count: they are updated, not trained."""
    from incept.nets import slim_variables, variables_under

    candidates = variables_under(model, trainable_scopes) if trainable_scopes else slim_variables(model)
    trainable_ids = {id(v) for v in model.trainable_weights} | {
        id(v) for layer in model.layers for v in layer.trainable_weights}
    out = {}
    for name, var in candidates.items():
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("moving_mean", "moving_variance"):
            continue
        if trainable_scopes or id(var) in trainable_ids:
            out[name] = var
    return out


def build_model(spec: JobSpec, num_classes: int) -> keras.Model:
    """The model a job trains and its checkpoints hold."""
    from incept.nets import build

    kwargs = {}
    if spec.dropout_keep_prob is not None:
        kwargs["dropout_keep_prob"] = spec.dropout_keep_prob
    return build(spec.model_name, num_classes, image_size=spec.resolved_image_size(), **kwargs)


def make_checkpoint(model: keras.Model, *, optimizer: Any = None, step: tf.Variable | None = None,
                    ema: WeightAverages | None = None) -> tf.train.Checkpoint:
    children = {"model": model}
    if optimizer is not None:
        children["optimizer"] = optimizer
    if step is not None:
        children["step"] = step
    if ema is not None:
        children["ema"] = ema
    return tf.train.Checkpoint(**children)


def make_manager(checkpoint: tf.train.Checkpoint, directory: Path, keep: int) -> tf.train.CheckpointManager:
    return tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=keep,
                                      checkpoint_name=CHECKPOINT_NAME)


def load_run_spec(run: RunLayout) -> JobSpec:
    try:
        data = json.loads(run.spec.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"job {run.job_id!r}: no spec at {run.spec}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"job {run.job_id!r}: unreadable spec.json: {e}") from None
    try:
        return parse_spec(data)
    except SpecError as e:
        raise CheckpointError(f"job {run.job_id!r}: {e}") from None


def load_class_names(run: RunLayout, spec: JobSpec, layout: Layout) -> list[str]:
    path = class_names_path(run)
    if path.exists():
        return list(json.loads(path.read_text()))
    from incept.data.dataset import DatasetInfo

    try:
        return list(DatasetInfo.load(spec.dataset_dir(layout)).class_names)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"job {run.job_id!r}: no class names ({path} missing and the "
                              f"dataset is unreadable: {e})") from None


@dataclass
class RestoredModel:
    model: keras.Model
    spec: JobSpec
    step: int
    class_names: list[str]
    ema_applied: bool


def restore_for_inference(run: RunLayout, step: int | None = None,
                          layout: Layout | None = None) -> RestoredModel:
    """The model of checkpoint ``step`` (default: the newest complete one), with
    the EMA weights swapped in when the spec set ``moving_average_decay``."""
    return InferenceRestorer(run, layout).restore(step)


class InferenceRestorer:
    """Builds a run's inference model once and restores checkpoints into it:
    an evaluator reading a job's checkpoints one after another pays for one
    model build, not one per checkpoint."""

    def __init__(self, run: RunLayout, layout: Layout | None = None):
        self.run = run
        self.layout = layout or Layout(run.root.parent.parent)
        self.spec = load_run_spec(run)
        self.class_names = load_class_names(run, self.spec, self.layout)
        self.model = build_model(self.spec, len(self.class_names))
        self.ema = None
        if self.spec.moving_average_decay:
            self.ema = WeightAverages(trainable_variables_by_name(self.model, self.spec.trainable_scopes),
                                      self.spec.moving_average_decay)
        self.checkpoint = make_checkpoint(self.model, ema=self.ema)
        # The averages alone: what changes between the checkpoints of a job whose
        # frozen variables do not (head-only), once one checkpoint was read whole.
        self.averages_only = tf.train.Checkpoint(ema=self.ema) if self.ema is not None else None
        self.read_whole = False

    def restore(self, step: int | None = None, *, frozen_unchanged: bool = False) -> RestoredModel:
        """``frozen_unchanged``: the job trains only its EMA-averaged variables
        (head-only): after the first checkpoint only the averages are read."""
        steps = list_checkpoints(self.run)
        job_id = self.run.job_id
        if step is None:
            if not steps:
                raise CheckpointError(f"job {job_id!r} has no complete checkpoint yet")
            step = steps[-1]
        elif int(step) not in steps:
            raise CheckpointError(f"job {job_id!r} has no complete checkpoint at step {step} "
                                  f"(complete: {steps or 'none'})")
        step = int(step)
        prefix = checkpoint_prefix(self.run, step)
        reader = self.checkpoint
        partial = frozen_unchanged and self.read_whole and self.averages_only is not None
        if partial and self.averages_only is not None:
            reader = self.averages_only
        try:
            status = reader.read(str(prefix))
            status.assert_existing_objects_matched().expect_partial()
            self.read_whole = self.read_whole or not partial
        except (tf.errors.OpError, AssertionError, ValueError, IndexError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"job {job_id!r}: checkpoint {prefix.name} is unreadable or "
                                  f"does not match its spec: {str(e).splitlines()[0][:300]}") from None
        if self.ema is not None:
            self.ema.copy_to_sources()
        return RestoredModel(model=self.model, spec=self.spec, step=step,
                             class_names=self.class_names, ema_applied=self.ema is not None)
