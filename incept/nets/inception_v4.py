"""Inception v4 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the
Impact of Residual Connections on Learning"), layer for layer as TF-slim's
``nets/inception_v4.py`` builds it, so the official slim checkpoint
``inception_v4_2016_09_09`` loads by name (see ``incept.nets.factory`` for the
naming convention and ``incept.nets.slim_checkpoint`` for the loader).

Feature maps for the default 299 px input::

    stem              299 -> 35x35x384   (Conv2d_1a..2b, Mixed_3a, Mixed_4a, Mixed_5a)
    4x Inception-A    35x35x384          (Mixed_5b..Mixed_5e)
    Reduction-A       17x17x1024         (Mixed_6a)
    7x Inception-B    17x17x1024         (Mixed_6b..Mixed_6h)  -> auxiliary head
    Reduction-B       8x8x1536           (Mixed_7a)
    3x Inception-C    8x8x1536           (Mixed_7b..Mixed_7d)  -> pool, dropout, logits

Every block's output is the layer ``<block>.concat`` (slim's end point of the
same name), e.g. ``model.get_layer("Mixed_6h.concat")``.

Input sizes other than 299: any size >= 75 px builds. The final average pool
is global, as slim's ``AvgPool_1a`` (its kernel is the whole map). The aux
head's ``AvgPool_1a_5x5`` (5x5, stride 3, VALID) needs a Mixed_6h map of at
least 5x5, i.e. >= 107 px input; below that slim cannot build the head at all,
so here the pool kernel shrinks to the map size (3x3 at 75 px). As in slim,
``Conv2d_2a``'s kernel is the spatial size of its input (5x5 at 299 px), so its
weights fit the official checkpoint only for inputs of 299..346 px; at other
sizes exclude ``InceptionV4/AuxLogits`` when loading it.
"""

from __future__ import annotations

import keras
from keras import layers

from incept.nets.factory import NetInfo, register
from incept.nets.layers import conv2d_bn, logits_dense

SCOPE = "InceptionV4"
DEFAULT_IMAGE_SIZE = 299
MIN_IMAGE_SIZE = 75


def _max_pool(x, name: str):
    # Every max pool in Inception v4 is slim's 3x3, stride 2, VALID reduction.
    return layers.MaxPooling2D(3, strides=2, padding="valid", name=name)(x)


def _avg_pool_3x3(x, name: str):
    # slim's avg_pool2d with SAME padding averages over the valid pixels only,
    # as tf.nn.avg_pool (and so Keras' AveragePooling2D) does.
    return layers.AveragePooling2D(3, strides=1, padding="same", name=name)(x)


def _concat(branches, name: str):
    return layers.Concatenate(axis=-1, name=name)(branches)


def stem(x, wd):
    """299x299x3 -> 35x35x384: Conv2d_1a_3x3 .. Mixed_5a."""
    x = conv2d_bn(x, 32, 3, strides=2, padding="valid", name="Conv2d_1a_3x3", **wd)
    x = conv2d_bn(x, 32, 3, padding="valid", name="Conv2d_2a_3x3", **wd)
    x = conv2d_bn(x, 64, 3, name="Conv2d_2b_3x3", **wd)
    x = mixed_3a(x, wd)
    x = mixed_4a(x, wd)
    return mixed_5a(x, wd)


def mixed_3a(x, wd, name: str = "Mixed_3a"):
    branch_0 = _max_pool(x, f"{name}.Branch_0.MaxPool_0a_3x3")
    branch_1 = conv2d_bn(x, 96, 3, strides=2, padding="valid",
                         name=f"{name}.Branch_1.Conv2d_0a_3x3", **wd)
    return _concat([branch_0, branch_1], f"{name}.concat")


def mixed_4a(x, wd, name: str = "Mixed_4a"):
    b0 = f"{name}.Branch_0"
    branch_0 = conv2d_bn(x, 64, 1, name=f"{b0}.Conv2d_0a_1x1", **wd)
    branch_0 = conv2d_bn(branch_0, 96, 3, padding="valid", name=f"{b0}.Conv2d_1a_3x3", **wd)
    b1 = f"{name}.Branch_1"
    branch_1 = conv2d_bn(x, 64, 1, name=f"{b1}.Conv2d_0a_1x1", **wd)
    branch_1 = conv2d_bn(branch_1, 64, (1, 7), name=f"{b1}.Conv2d_0b_1x7", **wd)
    branch_1 = conv2d_bn(branch_1, 64, (7, 1), name=f"{b1}.Conv2d_0c_7x1", **wd)
    branch_1 = conv2d_bn(branch_1, 96, 3, padding="valid", name=f"{b1}.Conv2d_1a_3x3", **wd)
    return _concat([branch_0, branch_1], f"{name}.concat")


def mixed_5a(x, wd, name: str = "Mixed_5a"):
    branch_0 = conv2d_bn(x, 192, 3, strides=2, padding="valid",
                         name=f"{name}.Branch_0.Conv2d_1a_3x3", **wd)
    branch_1 = _max_pool(x, f"{name}.Branch_1.MaxPool_1a_3x3")
    return _concat([branch_0, branch_1], f"{name}.concat")


def inception_a(x, wd, name: str):
    """35x35 grid block (Mixed_5b..5e): 384 channels in and out."""
    branch_0 = conv2d_bn(x, 96, 1, name=f"{name}.Branch_0.Conv2d_0a_1x1", **wd)
    b1 = f"{name}.Branch_1"
    branch_1 = conv2d_bn(x, 64, 1, name=f"{b1}.Conv2d_0a_1x1", **wd)
    branch_1 = conv2d_bn(branch_1, 96, 3, name=f"{b1}.Conv2d_0b_3x3", **wd)
    b2 = f"{name}.Branch_2"
    branch_2 = conv2d_bn(x, 64, 1, name=f"{b2}.Conv2d_0a_1x1", **wd)
    branch_2 = conv2d_bn(branch_2, 96, 3, name=f"{b2}.Conv2d_0b_3x3", **wd)
    branch_2 = conv2d_bn(branch_2, 96, 3, name=f"{b2}.Conv2d_0c_3x3", **wd)
    b3 = f"{name}.Branch_3"
    branch_3 = _avg_pool_3x3(x, f"{b3}.AvgPool_0a_3x3")
    branch_3 = conv2d_bn(branch_3, 96, 1, name=f"{b3}.Conv2d_0b_1x1", **wd)
    return _concat([branch_0, branch_1, branch_2, branch_3], f"{name}.concat")


def reduction_a(x, wd, name: str = "Mixed_6a"):
    """35x35x384 -> 17x17x1024."""
    branch_0 = conv2d_bn(x, 384, 3, strides=2, padding="valid",
                         name=f"{name}.Branch_0.Conv2d_1a_3x3", **wd)
    b1 = f"{name}.Branch_1"
    branch_1 = conv2d_bn(x, 192, 1, name=f"{b1}.Conv2d_0a_1x1", **wd)
    branch_1 = conv2d_bn(branch_1, 224, 3, name=f"{b1}.Conv2d_0b_3x3", **wd)
    branch_1 = conv2d_bn(branch_1, 256, 3, strides=2, padding="valid",
                         name=f"{b1}.Conv2d_1a_3x3", **wd)
    branch_2 = _max_pool(x, f"{name}.Branch_2.MaxPool_1a_3x3")
    return _concat([branch_0, branch_1, branch_2], f"{name}.concat")


def inception_b(x, wd, name: str):
    """17x17 grid block (Mixed_6b..6h): 1024 channels in and out."""
    branch_0 = conv2d_bn(x, 384, 1, name=f"{name}.Branch_0.Conv2d_0a_1x1", **wd)
    b1 = f"{name}.Branch_1"
    branch_1 = conv2d_bn(x, 192, 1, name=f"{b1}.Conv2d_0a_1x1", **wd)
    branch_1 = conv2d_bn(branch_1, 224, (1, 7), name=f"{b1}.Conv2d_0b_1x7", **wd)
    branch_1 = conv2d_bn(branch_1, 256, (7, 1), name=f"{b1}.Conv2d_0c_7x1", **wd)
    b2 = f"{name}.Branch_2"
    branch_2 = conv2d_bn(x, 192, 1, name=f"{b2}.Conv2d_0a_1x1", **wd)
    branch_2 = conv2d_bn(branch_2, 192, (7, 1), name=f"{b2}.Conv2d_0b_7x1", **wd)
    branch_2 = conv2d_bn(branch_2, 224, (1, 7), name=f"{b2}.Conv2d_0c_1x7", **wd)
    branch_2 = conv2d_bn(branch_2, 224, (7, 1), name=f"{b2}.Conv2d_0d_7x1", **wd)
    branch_2 = conv2d_bn(branch_2, 256, (1, 7), name=f"{b2}.Conv2d_0e_1x7", **wd)
    b3 = f"{name}.Branch_3"
    branch_3 = _avg_pool_3x3(x, f"{b3}.AvgPool_0a_3x3")
    branch_3 = conv2d_bn(branch_3, 128, 1, name=f"{b3}.Conv2d_0b_1x1", **wd)
    return _concat([branch_0, branch_1, branch_2, branch_3], f"{name}.concat")


def reduction_b(x, wd, name: str = "Mixed_7a"):
    """17x17x1024 -> 8x8x1536."""
    b0 = f"{name}.Branch_0"
    branch_0 = conv2d_bn(x, 192, 1, name=f"{b0}.Conv2d_0a_1x1", **wd)
    branch_0 = conv2d_bn(branch_0, 192, 3, strides=2, padding="valid",
                         name=f"{b0}.Conv2d_1a_3x3", **wd)
    b1 = f"{name}.Branch_1"
    branch_1 = conv2d_bn(x, 256, 1, name=f"{b1}.Conv2d_0a_1x1", **wd)
    branch_1 = conv2d_bn(branch_1, 256, (1, 7), name=f"{b1}.Conv2d_0b_1x7", **wd)
    branch_1 = conv2d_bn(branch_1, 320, (7, 1), name=f"{b1}.Conv2d_0c_7x1", **wd)
    branch_1 = conv2d_bn(branch_1, 320, 3, strides=2, padding="valid",
                         name=f"{b1}.Conv2d_1a_3x3", **wd)
    branch_2 = _max_pool(x, f"{name}.Branch_2.MaxPool_1a_3x3")
    return _concat([branch_0, branch_1, branch_2], f"{name}.concat")


def inception_c(x, wd, name: str):
    """8x8 grid block (Mixed_7b..7d): 1536 channels in and out."""
    branch_0 = conv2d_bn(x, 256, 1, name=f"{name}.Branch_0.Conv2d_0a_1x1", **wd)
    b1 = f"{name}.Branch_1"
    branch_1 = conv2d_bn(x, 384, 1, name=f"{b1}.Conv2d_0a_1x1", **wd)
    branch_1 = _concat([
        conv2d_bn(branch_1, 256, (1, 3), name=f"{b1}.Conv2d_0b_1x3", **wd),
        conv2d_bn(branch_1, 256, (3, 1), name=f"{b1}.Conv2d_0c_3x1", **wd),
    ], f"{b1}.concat")
    b2 = f"{name}.Branch_2"
    branch_2 = conv2d_bn(x, 384, 1, name=f"{b2}.Conv2d_0a_1x1", **wd)
    branch_2 = conv2d_bn(branch_2, 448, (3, 1), name=f"{b2}.Conv2d_0b_3x1", **wd)
    branch_2 = conv2d_bn(branch_2, 512, (1, 3), name=f"{b2}.Conv2d_0c_1x3", **wd)
    branch_2 = _concat([
        conv2d_bn(branch_2, 256, (1, 3), name=f"{b2}.Conv2d_0d_1x3", **wd),
        conv2d_bn(branch_2, 256, (3, 1), name=f"{b2}.Conv2d_0e_3x1", **wd),
    ], f"{b2}.concat")
    b3 = f"{name}.Branch_3"
    branch_3 = _avg_pool_3x3(x, f"{b3}.AvgPool_0a_3x3")
    branch_3 = conv2d_bn(branch_3, 256, 1, name=f"{b3}.Conv2d_0b_1x1", **wd)
    return _concat([branch_0, branch_1, branch_2, branch_3], f"{name}.concat")


def aux_head(x, num_classes: int, wd, name: str = "AuxLogits"):
    """Auxiliary classifier on Mixed_6h; returns (aux_pre_logits, aux_logits)."""
    # slim: 5x5 stride 3 VALID; shrunk to the map for inputs under 107 px (see module doc).
    pool = min(5, x.shape[1], x.shape[2])
    x = layers.AveragePooling2D(pool, strides=3, padding="valid", name=f"{name}.AvgPool_1a_5x5")(x)
    x = conv2d_bn(x, 128, 1, name=f"{name}.Conv2d_1b_1x1", **wd)
    x = conv2d_bn(x, 768, tuple(x.shape[1:3]), padding="valid", name=f"{name}.Conv2d_2a", **wd)
    aux_pre_logits = layers.Flatten(name=f"{name}.Flatten")(x)
    return aux_pre_logits, logits_dense(aux_pre_logits, num_classes, name=f"{name}.Aux_logits", **wd)


def inception_v4(num_classes: int = 1001, image_size: int = DEFAULT_IMAGE_SIZE, *,
                 aux_logits: bool = True, dropout_keep_prob: float = 0.8,
                 weight_decay: float = 0.0) -> keras.Model:
    """slim's ``inception_v4(inputs, num_classes, create_aux_logits=aux_logits)``.

    ``weight_decay`` is slim's ``inception_v4_arg_scope(weight_decay=...)``
    (slim's training default is 0.00004), an L2 loss on conv and dense kernels.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"Inception v4 needs images of at least {MIN_IMAGE_SIZE} px, got {image_size}")
    wd = {"weight_decay": weight_decay}
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = stem(inputs, wd)
    for block in "bcde":
        x = inception_a(x, wd, f"Mixed_5{block}")
    x = reduction_a(x, wd)
    for block in "bcdefgh":
        x = inception_b(x, wd, f"Mixed_6{block}")
    mixed_6h = x
    x = reduction_b(x, wd)
    for block in "bcd":
        x = inception_c(x, wd, f"Mixed_7{block}")

    # slim's AvgPool_1a uses the whole map as kernel, i.e. a global average pool.
    pre_logits = layers.GlobalAveragePooling2D(name="Logits.AvgPool_1a")(x)
    dropped = layers.Dropout(1.0 - dropout_keep_prob, name="Logits.Dropout_1b")(pre_logits)
    outputs = {
        "logits": logits_dense(dropped, num_classes, name="Logits.Logits", **wd),
        "pre_logits": pre_logits,
    }
    if aux_logits:
        outputs["aux_pre_logits"], outputs["aux_logits"] = aux_head(mixed_6h, num_classes, wd)
    return keras.Model(inputs, outputs, name=SCOPE)


INFO = register(NetInfo(
    name="inception_v4",
    builder=inception_v4,
    scope=SCOPE,
    default_image_size=DEFAULT_IMAGE_SIZE,
    min_image_size=MIN_IMAGE_SIZE,
    head_layers=("Logits.Logits", "AuxLogits.Aux_logits"),
    head_scopes=(f"{SCOPE}/Logits", f"{SCOPE}/AuxLogits/Aux_logits"),
    dropout_layer="Logits.Dropout_1b",
))
