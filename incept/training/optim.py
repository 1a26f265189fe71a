"""Optimizer and learning-rate schedule from a spec, as slim's
``_configure_optimizer`` / ``_configure_learning_rate``."""

from __future__ import annotations

import keras

from incept.spec import JobSpec


def decay_steps(spec: JobSpec, num_train: int) -> int:
    """slim: ``int(num_samples_per_epoch * num_epochs_per_decay / batch_size)``."""
    return max(1, int(num_train * spec.num_epochs_per_decay / spec.batch_size))


def learning_rate(spec: JobSpec, num_train: int):
    if spec.learning_rate_decay_type == "fixed":
        return spec.learning_rate
    # Staircase: the rate drops by the factor every num_epochs_per_decay epochs.
    # It is a function of optimizer.iterations, so a resumed job continues it.
    return keras.optimizers.schedules.ExponentialDecay(
        spec.learning_rate, decay_steps(spec, num_train), spec.learning_rate_decay_factor,
        staircase=True)


def make_optimizer(spec: JobSpec, num_train: int, mixed_precision: bool = False):
    lr = learning_rate(spec, num_train)
    if spec.optimizer == "adam":
        opt = keras.optimizers.Adam(lr, beta_1=spec.adam_beta1, beta_2=spec.adam_beta2,
                                    epsilon=spec.opt_epsilon)
    elif spec.optimizer == "momentum":
        opt = keras.optimizers.SGD(lr, momentum=spec.momentum)
    elif spec.optimizer == "rmsprop":
        opt = keras.optimizers.RMSprop(lr, rho=spec.rmsprop_decay, momentum=spec.momentum,
                                       epsilon=spec.opt_epsilon)
    else:
        opt = keras.optimizers.SGD(lr)
    if mixed_precision:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def current_learning_rate(optimizer) -> float:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    lr = inner.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def steps_for(spec: JobSpec, num_train: int) -> int:
    return spec.total_steps(num_train)
