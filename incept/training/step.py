"""The compiled train step: forward pass (the whole net, or only its heads on
cached features), slim's losses, gradients, optimizer update and weight
averages, several steps per call."""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from incept.nets import net_info
from incept.spec import JobSpec
from incept.training.state import TrainState


def _make_forward(model: keras.Model, model_name: str, head_only: bool) -> Callable:
    """The net's outputs for a batch: images through the whole model, or (head
    only) cached pre-logits features through the heads' dropout and dense layers."""
    if not head_only:
        return lambda x, training: model(x, training=training)
    net = net_info(model_name)
    logits_layer = model.get_layer(net.head_layers[0])
    aux_layer = next((model.get_layer(n) for n in net.head_layers[1:]
                      if any(layer.name == n for layer in model.layers)), None)
    dropout = model.get_layer(net.dropout_layer)
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype

    def forward(x, training):
        out = {"logits": logits_layer(dropout(tf.cast(x["pre_logits"], compute_dtype),
                                              training=training))}
        if aux_layer is not None and "aux_pre_logits" in x:
            out["aux_logits"] = aux_layer(tf.cast(x["aux_pre_logits"], compute_dtype))
        return out

    return forward


def _make_loss(spec: JobSpec, train_vars: dict, num_classes: int, replicas: int) -> Callable:
    """slim's loss: cross-entropy on the logits (plus the weighted aux head),
    averaged over the global batch, plus L2 weight decay on the kernels."""
    kernels = [v for n, v in train_vars.items() if n.endswith("/weights")]

    def loss_fn(outputs, labels):
        onehot = tf.one_hot(labels, num_classes)
        total = keras.losses.categorical_crossentropy(
            onehot, tf.cast(outputs["logits"], tf.float32), from_logits=True,
            label_smoothing=spec.label_smoothing)
        if "aux_logits" in outputs and spec.aux_loss_weight:
            total = total + spec.aux_loss_weight * keras.losses.categorical_crossentropy(
                onehot, tf.cast(outputs["aux_logits"], tf.float32), from_logits=True,
                label_smoothing=spec.label_smoothing)
        loss = tf.nn.compute_average_loss(total, global_batch_size=spec.batch_size)
        if spec.weight_decay and kernels:
            # slim's l2_regularizer: weight_decay * sum(w^2) / 2, once across replicas.
            loss += spec.weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(k, tf.float32))
                                                  for k in kernels]) / replicas
        return loss

    return loss_fn


def make_train_step(spec: JobSpec, state: TrainState, strategy: tf.distribute.Strategy, *,
                    num_classes: int, head_only: bool, xla: bool, mixed: bool) -> Callable:
    """``train_steps(iterator, n)``: n steps in one call, returning the last
    step's loss (summed over replicas) as a tensor."""
    forward = _make_forward(state.model, spec.model_name, head_only)
    loss_fn = _make_loss(spec, state.train_vars, num_classes, strategy.num_replicas_in_sync)
    optimizer, var_list, ema = state.optimizer, state.var_list, state.ema

    def compute_gradients(x, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(forward(x, training=True), labels)
            scaled = optimizer.scale_loss(loss) if mixed else loss
        return loss, tape.gradient(scaled, var_list)

    if xla:
        # XLA compiles the forward and backward pass only; without it the step
        # stays one graph, which Grappler optimizes as a whole.
        compute_gradients = tf.function(compute_gradients, jit_compile=True)

    def replica_step(x, labels):
        loss, grads = compute_gradients(x, labels)
        optimizer.apply_gradients(zip(grads, var_list, strict=True))
        return loss

    @tf.function
    def train_steps(it, n):
        # n steps in one call (Keras's steps_per_execution): one Python round trip
        # for many small steps. n is a tensor, so every n shares one trace.
        loss = tf.constant(0.0)
        for _ in tf.range(n):
            x, labels = next(it)
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM,
                                   strategy.run(replica_step, args=(x, labels)), axis=None)
            if ema is not None:
                ema.update(tf.cast(optimizer.iterations, tf.int64) - 1)
        return loss

    return train_steps
