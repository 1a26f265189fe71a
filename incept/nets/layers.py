"""Building blocks shared by the nets, with slim's defaults."""

from __future__ import annotations

import keras
from keras import layers

# slim's inception_arg_scope: batch_norm_decay=0.9997, epsilon=0.001, scale=False.
BATCH_NORM_MOMENTUM = 0.9997
BATCH_NORM_EPSILON = 0.001


def _conv_initializer():
    # slim's variance_scaling_initializer() default: He init, truncated normal over fan-in.
    return keras.initializers.VarianceScaling(2.0, mode="fan_in", distribution="truncated_normal")


def conv2d_bn(x, filters: int, kernel_size, strides=1, padding: str = "same", *,
              name: str, weight_decay: float = 0.0,
              batch_norm_momentum: float = BATCH_NORM_MOMENTUM):
    """slim.conv2d with batch norm and ReLU: a bias-free convolution named ``name``
    followed by ``name.BatchNorm`` (no gamma, as slim's ``scale=False``)."""
    regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False,
                      kernel_initializer=_conv_initializer(), kernel_regularizer=regularizer,
                      name=name)(x)
    x = layers.BatchNormalization(momentum=batch_norm_momentum, epsilon=BATCH_NORM_EPSILON,
                                  scale=False, name=f"{name}.BatchNorm")(x)
    return layers.Activation("relu", name=f"{name}.Relu")(x)


def logits_dense(x, num_classes: int, *, name: str, weight_decay: float = 0.0):
    """slim.fully_connected without activation, for logits heads."""
    regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    return layers.Dense(num_classes, kernel_regularizer=regularizer, name=name)(x)
