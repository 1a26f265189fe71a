"""What a training job builds before its first step: the model (base checkpoint
loaded, frozen layers marked), the optimizer, the weight averages and the
checkpoint that saves them all, restored from the run's newest good one."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from incept.checkpoints import (
    WeightAverages,
    build_model,
    checkpoint_prefix,
    list_checkpoints,
    make_checkpoint,
    make_manager,
    trainable_variables_by_name,
)
from incept.errors import UserError
from incept.layout import Layout, RunLayout
from incept.nets import layers_under, load_slim_checkpoint
from incept.spec import JobSpec
from incept.training import optim
from incept.training.reporting import Reporter

log = logging.getLogger("incept.trainer")


@dataclass
class TrainState:
    """The variables a job trains and the checkpoint that saves them."""

    model: keras.Model
    train_vars: dict[str, tf.Variable]  # slim name -> variable, within trainable_scopes
    var_list: list[tf.Variable]  # train_vars' values, in the optimizer's order
    optimizer: keras.optimizers.Optimizer
    ema: WeightAverages | None
    step_var: tf.Variable
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    manager_dir: Path  # run.checkpoints on the chief, a scratch folder on the other workers
    base: Path | None  # the base checkpoint the model started from


def resolve_checkpoint(layout: Layout, value: str | None) -> Path | None:
    """The spec's base checkpoint, confined to the data root (and the allowed
    checkpoint roots) here again: the spec on the volume is not trusted."""
    if not value:
        return None
    try:
        return layout.base_checkpoint(value)
    except ValueError as e:
        raise UserError(f"checkpoint: {e}") from None


def build_state(spec: JobSpec, *, num_classes: int, num_train: int, layout: Layout, run: RunLayout,
                strategy: tf.distribute.Strategy, chief: bool, mixed: bool) -> TrainState:
    """The model and its training variables under ``strategy``, from the base
    checkpoint if the spec names one. Sets Keras's global policy and seed."""
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(spec.seed)
    base = resolve_checkpoint(layout, spec.checkpoint)
    with strategy.scope():
        model = build_model(spec, num_classes)
        if base is not None:
            report = load_slim_checkpoint(model, base, exclude_scopes=spec.exclude_scopes,
                                          ignore_missing=spec.ignore_missing_vars)
            log.info("base checkpoint %s: %s", base, report.summary())
        _set_trainable(model, spec.trainable_scopes)
        train_vars = trainable_variables_by_name(model, spec.trainable_scopes)
        if not train_vars:
            raise UserError(f"trainable_scopes {spec.trainable_scopes} select no variable")
        var_list = list(train_vars.values())
        optimizer = optim.make_optimizer(spec, num_train, mixed_precision=mixed)
        optimizer.build(var_list)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        ema = WeightAverages(train_vars, spec.moving_average_decay) if spec.moving_average_decay else None
    checkpoint = make_checkpoint(model, optimizer=optimizer, step=step_var, ema=ema)
    manager_dir = run.checkpoints if chief else Path(tempfile.mkdtemp(prefix=f"incept-{run.job_id}-w"))
    manager = make_manager(checkpoint, manager_dir, spec.keep_checkpoints)
    return TrainState(model=model, train_vars=train_vars, var_list=var_list, optimizer=optimizer,
                      ema=ema, step_var=step_var, checkpoint=checkpoint, manager=manager,
                      manager_dir=manager_dir, base=base)


def _set_trainable(model: keras.Model, scopes) -> None:
    if not scopes:
        return
    train = {id(layer) for layer in layers_under(model, scopes)}
    for layer in model.layers:
        layer.trainable = id(layer) in train


def restore_newest(checkpoint: tf.train.Checkpoint, run: RunLayout, reporter: Reporter) -> int | None:
    """The step restored, or None for a fresh job. Checkpoints that all fail to
    restore stop the job: training from scratch would rotate them away."""
    steps = list_checkpoints(run)
    for step in reversed(steps):
        prefix = checkpoint_prefix(run, step)
        try:
            checkpoint.read(str(prefix)).assert_existing_objects_matched()
            return step
        except (tf.errors.OpError, AssertionError, ValueError, IndexError, KeyError) as e:
            reporter.error(f"CHECKPOINT {prefix.name} OF JOB {run.job_id} IS CORRUPT "
                           f"({str(e).splitlines()[0][:200]}); falling back to the one before")
    if steps:
        raise UserError(f"none of the checkpoints {steps} of job {run.job_id} can be restored "
                        "into the model its spec describes (a changed spec, or mixed_precision "
                        "resolved differently on this machine: set it explicitly in the spec)")
    return None
