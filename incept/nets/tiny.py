"""A tiny network for fast tests: the same output dict, head layers and
naming convention as Inception v4, a few thousand parameters."""

from __future__ import annotations

from functools import partial

import keras
from keras import layers

from incept.nets.factory import NetInfo, register
from incept.nets.layers import conv2d_bn, logits_dense

SCOPE = "TinyNet"


def tiny_net(num_classes: int, image_size: int = 32, *, aux_logits: bool = True,
             dropout_keep_prob: float = 0.8, weight_decay: float = 0.0) -> keras.Model:
    # slim's BatchNorm decay (0.9997) needs thousands of steps before the moving
    # statistics fit; the tiny net trains for dozens, so its averages move faster.
    wd = {"weight_decay": weight_decay}
    conv = partial(conv2d_bn, weight_decay=weight_decay, batch_norm_momentum=0.9)
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = conv(inputs, 8, 3, strides=2, name="Conv2d_1a_3x3")
    x = conv(x, 16, 3, name="Conv2d_2a_3x3")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="MaxPool_3a_3x3")(x)
    mid = conv(x, 24, 3, name="Conv2d_4a_3x3")
    x = conv(mid, 32, 3, strides=2, name="Conv2d_5a_3x3")

    pre_logits = layers.GlobalAveragePooling2D(name="Logits.AvgPool")(x)
    dropped = layers.Dropout(1.0 - dropout_keep_prob, name="Logits.Dropout")(pre_logits)
    outputs = {
        "logits": logits_dense(dropped, num_classes, name="Logits.Logits", **wd),
        "pre_logits": pre_logits,
    }
    if aux_logits:
        aux = layers.AveragePooling2D(2, strides=2, padding="valid", name="AuxLogits.AvgPool")(mid)
        aux = conv(aux, 16, 1, name="AuxLogits.Conv2d_1b_1x1")
        aux = layers.GlobalAveragePooling2D(name="AuxLogits.Pool")(aux)
        outputs["aux_pre_logits"] = aux
        outputs["aux_logits"] = logits_dense(aux, num_classes, name="AuxLogits.Aux_logits", **wd)
    return keras.Model(inputs, outputs, name=SCOPE)


INFO = register(NetInfo(
    name="tiny",
    builder=tiny_net,
    scope=SCOPE,
    default_image_size=32,
    min_image_size=16,
    head_layers=("Logits.Logits", "AuxLogits.Aux_logits"),
    head_scopes=(f"{SCOPE}/Logits", f"{SCOPE}/AuxLogits/Aux_logits"),
))
