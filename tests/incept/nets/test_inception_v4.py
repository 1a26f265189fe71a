"""The full Inception v4 against TF-slim's definition.

A checkpoint with random values under slim's names is loaded into the Keras
net, and the net's end points and logits are compared with a second, plain
tf.nn implementation written from slim's ``inception_v4`` facts (filter
counts, kernel shapes, strides, paddings, scope names) that reads its weights
from the checkpoint by name. Two full builds per run: 75 px (the smallest
size) and 299 px (the default).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import incept.nets as nets

pytestmark = pytest.mark.slow

EPSILON = 0.001  # slim's inception_arg_scope batch_norm_epsilon
NUM_CLASSES = 11


class SlimReference:
    """slim's inception_v4 in plain tf.nn ops, weights read by slim name."""

    def __init__(self, ckpt: dict[str, np.ndarray]):
        self.ckpt = ckpt
        self.used: set[str] = set()
        self.end_points: dict[str, tf.Tensor] = {}

    def _get(self, name):
        self.used.add(name)
        return self.ckpt[name]

    def conv(self, x, scope, filters, kernel, stride=1, padding="SAME"):
        """slim.conv2d under inception_arg_scope: no bias, batch norm without gamma, ReLU."""
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        weights = self._get(f"InceptionV4/{scope}/weights")
        assert weights.shape == (*kernel, x.shape[-1], filters), scope
        y = tf.nn.conv2d(x, weights, stride, padding)
        bn = f"InceptionV4/{scope}/BatchNorm"
        y = tf.nn.batch_normalization(y, self._get(f"{bn}/moving_mean"), self._get(f"{bn}/moving_variance"),
                                      offset=self._get(f"{bn}/beta"), scale=None,
                                      variance_epsilon=EPSILON)
        return tf.nn.relu(y)

    @staticmethod
    def max_pool(x):
        return tf.nn.max_pool2d(x, 3, 2, "VALID")

    @staticmethod
    def avg_pool(x):
        return tf.nn.avg_pool2d(x, 3, 1, "SAME")

    def block(self, name, *branches):
        out = tf.concat(list(branches), axis=3)
        self.end_points[name] = out
        return out

    def __call__(self, images):
        c = self.conv
        x = c(images, "Conv2d_1a_3x3", 32, 3, 2, "VALID")
        x = c(x, "Conv2d_2a_3x3", 32, 3, 1, "VALID")
        x = c(x, "Conv2d_2b_3x3", 64, 3)
        x = self.block("Mixed_3a", self.max_pool(x), c(x, "Mixed_3a/Branch_1/Conv2d_0a_3x3", 96, 3, 2, "VALID"))
        s = "Mixed_4a/Branch_"
        b0 = c(c(x, s + "0/Conv2d_0a_1x1", 64, 1), s + "0/Conv2d_1a_3x3", 96, 3, 1, "VALID")
        b1 = c(x, s + "1/Conv2d_0a_1x1", 64, 1)
        b1 = c(c(b1, s + "1/Conv2d_0b_1x7", 64, (1, 7)), s + "1/Conv2d_0c_7x1", 64, (7, 1))
        b1 = c(b1, s + "1/Conv2d_1a_3x3", 96, 3, 1, "VALID")
        x = self.block("Mixed_4a", b0, b1)
        x = self.block("Mixed_5a", c(x, "Mixed_5a/Branch_0/Conv2d_1a_3x3", 192, 3, 2, "VALID"), self.max_pool(x))
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_5e"):
            s = name + "/Branch_"
            x = self.block(
                name,
                c(x, s + "0/Conv2d_0a_1x1", 96, 1),
                c(c(x, s + "1/Conv2d_0a_1x1", 64, 1), s + "1/Conv2d_0b_3x3", 96, 3),
                c(c(c(x, s + "2/Conv2d_0a_1x1", 64, 1), s + "2/Conv2d_0b_3x3", 96, 3), s + "2/Conv2d_0c_3x3", 96, 3),
                c(self.avg_pool(x), s + "3/Conv2d_0b_1x1", 96, 1))
        s = "Mixed_6a/Branch_"
        b1 = c(c(x, s + "1/Conv2d_0a_1x1", 192, 1), s + "1/Conv2d_0b_3x3", 224, 3)
        x = self.block("Mixed_6a", c(x, s + "0/Conv2d_1a_3x3", 384, 3, 2, "VALID"),
                       c(b1, s + "1/Conv2d_1a_3x3", 256, 3, 2, "VALID"), self.max_pool(x))
        for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_6f", "Mixed_6g", "Mixed_6h"):
            s = name + "/Branch_"
            b1 = c(x, s + "1/Conv2d_0a_1x1", 192, 1)
            b1 = c(c(b1, s + "1/Conv2d_0b_1x7", 224, (1, 7)), s + "1/Conv2d_0c_7x1", 256, (7, 1))
            b2 = c(x, s + "2/Conv2d_0a_1x1", 192, 1)
            b2 = c(c(b2, s + "2/Conv2d_0b_7x1", 192, (7, 1)), s + "2/Conv2d_0c_1x7", 224, (1, 7))
            b2 = c(c(b2, s + "2/Conv2d_0d_7x1", 224, (7, 1)), s + "2/Conv2d_0e_1x7", 256, (1, 7))
            x = self.block(name, c(x, s + "0/Conv2d_0a_1x1", 384, 1), b1, b2,
                           c(self.avg_pool(x), s + "3/Conv2d_0b_1x1", 128, 1))
        aux_pre_logits, aux_logits = self.aux_head(x)
        s = "Mixed_7a/Branch_"
        b0 = c(c(x, s + "0/Conv2d_0a_1x1", 192, 1), s + "0/Conv2d_1a_3x3", 192, 3, 2, "VALID")
        b1 = c(x, s + "1/Conv2d_0a_1x1", 256, 1)
        b1 = c(c(b1, s + "1/Conv2d_0b_1x7", 256, (1, 7)), s + "1/Conv2d_0c_7x1", 320, (7, 1))
        x = self.block("Mixed_7a", b0, c(b1, s + "1/Conv2d_1a_3x3", 320, 3, 2, "VALID"), self.max_pool(x))
        for name in ("Mixed_7b", "Mixed_7c", "Mixed_7d"):
            s = name + "/Branch_"
            b1 = c(x, s + "1/Conv2d_0a_1x1", 384, 1)
            b1 = tf.concat([c(b1, s + "1/Conv2d_0b_1x3", 256, (1, 3)), c(b1, s + "1/Conv2d_0c_3x1", 256, (3, 1))], 3)
            b2 = c(x, s + "2/Conv2d_0a_1x1", 384, 1)
            b2 = c(c(b2, s + "2/Conv2d_0b_3x1", 448, (3, 1)), s + "2/Conv2d_0c_1x3", 512, (1, 3))
            b2 = tf.concat([c(b2, s + "2/Conv2d_0d_1x3", 256, (1, 3)), c(b2, s + "2/Conv2d_0e_3x1", 256, (3, 1))], 3)
            x = self.block(name, c(x, s + "0/Conv2d_0a_1x1", 256, 1), b1, b2,
                           c(self.avg_pool(x), s + "3/Conv2d_0b_1x1", 256, 1))
        pre_logits = tf.reduce_mean(x, axis=[1, 2])  # AvgPool_1a over the whole map
        logits = self.dense(pre_logits, "Logits/Logits")
        return {"logits": logits, "pre_logits": pre_logits,
                "aux_logits": aux_logits, "aux_pre_logits": aux_pre_logits}

    def aux_head(self, x):
        # 5x5/3 VALID average pool, shrunk to the map below 5x5 (incept's documented rule).
        pool = min(5, x.shape[1])
        x = tf.nn.avg_pool2d(x, pool, 3, "VALID")
        x = self.conv(x, "AuxLogits/Conv2d_1b_1x1", 128, 1)
        x = self.conv(x, "AuxLogits/Conv2d_2a", 768, (x.shape[1], x.shape[2]), 1, "VALID")
        pre = tf.reshape(x, [x.shape[0], -1])
        return pre, self.dense(pre, "AuxLogits/Aux_logits")

    def dense(self, x, scope):
        return tf.matmul(x, self._get(f"InceptionV4/{scope}/weights")) + self._get(f"InceptionV4/{scope}/biases")


END_POINTS = ["Mixed_3a", "Mixed_4a", "Mixed_5a", "Mixed_5b", "Mixed_5e", "Mixed_6a", "Mixed_6h",
              "Mixed_7a", "Mixed_7d"]


@pytest.fixture(scope="module")
def small_net(tmp_path_factory, write_slim_checkpoint, slim_values):
    """The 75 px net with a random slim checkpoint loaded, and that checkpoint."""
    model = nets.build("inception_v4", NUM_CLASSES, image_size=75)
    values = slim_values({n: tuple(v.shape) for n, v in nets.slim_variables(model).items()}, seed=7)
    prefix = write_slim_checkpoint(tmp_path_factory.mktemp("slim") / "inception_v4.ckpt",
                                  {**values, "global_step": np.array(10, np.int64)})
    report = nets.load_slim_checkpoint(model, prefix)
    return model, values, report


@pytest.fixture(scope="module")
def default_net():
    return nets.build("inception_v4", 1001)


def _close(actual, expected, name):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, name
    scale = float(np.abs(expected).max())
    assert scale > 0, f"{name} is all zeros: the comparison would prove nothing"
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


def test_checkpoint_loads_completely(small_net):
    model, values, report = small_net
    assert sorted(report.loaded) == sorted(values) and report.missing == ()
    assert report.skipped == ("global_step",)
    assert len(values) == len(model.weights)


def test_outputs_equal_a_plain_tf_computation_of_slim_inception_v4(small_net):
    model, values, _ = small_net
    images = np.random.default_rng(0).uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)
    reference = SlimReference(values)
    expected = reference(tf.constant(images))
    # The reference read every checkpoint variable: the Keras net has no extra variables.
    assert reference.used == set(values)

    end_points = keras.Model(model.input, {name: model.get_layer(f"{name}.concat").output
                                           for name in END_POINTS})
    actual = end_points(images, training=False)
    for name in END_POINTS:
        _close(actual[name], reference.end_points[name], name)
    outputs = model(images, training=False)
    for key in ("pre_logits", "logits", "aux_pre_logits", "aux_logits"):
        _close(outputs[key], expected[key], key)


def test_smallest_input_shapes(small_net):
    model, _, _ = small_net
    shapes = {name: tuple(model.get_layer(f"{name}.concat").output.shape[1:]) for name in END_POINTS}
    assert shapes["Mixed_5a"] == (7, 7, 384)
    assert shapes["Mixed_6h"] == (3, 3, 1024)
    assert shapes["Mixed_7d"] == (1, 1, 1536)
    assert model.get_layer("AuxLogits.AvgPool_1a_5x5").pool_size == (3, 3)
    out = model(np.zeros((1, 75, 75, 3), np.float32), training=False)
    assert out["logits"].shape == (1, NUM_CLASSES) and out["aux_logits"].shape == (1, NUM_CLASSES)


# Names and shapes as in the official inception_v4_2016_09_09 checkpoint.
OFFICIAL = {
    "InceptionV4/Conv2d_1a_3x3/weights": (3, 3, 3, 32),
    "InceptionV4/Conv2d_1a_3x3/BatchNorm/beta": (32,),
    "InceptionV4/Mixed_3a/Branch_1/Conv2d_0a_3x3/weights": (3, 3, 64, 96),
    "InceptionV4/Mixed_5e/Branch_3/Conv2d_0b_1x1/BatchNorm/moving_variance": (96,),
    "InceptionV4/Mixed_6a/Branch_0/Conv2d_1a_3x3/weights": (3, 3, 384, 384),
    "InceptionV4/Mixed_6b/Branch_1/Conv2d_0b_1x7/weights": (1, 7, 192, 224),
    "InceptionV4/Mixed_6h/Branch_2/Conv2d_0e_1x7/BatchNorm/moving_mean": (256,),
    "InceptionV4/Mixed_7a/Branch_1/Conv2d_1a_3x3/weights": (3, 3, 320, 320),
    "InceptionV4/Mixed_7d/Branch_2/Conv2d_0e_3x1/weights": (3, 1, 512, 256),
    "InceptionV4/AuxLogits/Conv2d_1b_1x1/weights": (1, 1, 1024, 128),
    "InceptionV4/AuxLogits/Conv2d_2a/weights": (5, 5, 128, 768),
    "InceptionV4/AuxLogits/Aux_logits/weights": (768, 1001),
    "InceptionV4/AuxLogits/Aux_logits/biases": (1001,),
    "InceptionV4/Logits/Logits/weights": (1536, 1001),
    "InceptionV4/Logits/Logits/biases": (1001,),
}


def test_default_size_shapes_and_official_names(default_net):
    model = default_net
    variables = nets.slim_variables(model)
    for name, shape in OFFICIAL.items():
        assert tuple(variables[name].shape) == shape, name
    shapes = {name: tuple(model.get_layer(f"{name}.concat").output.shape[1:]) for name in END_POINTS}
    assert shapes == {
        "Mixed_3a": (73, 73, 160), "Mixed_4a": (71, 71, 192), "Mixed_5a": (35, 35, 384),
        "Mixed_5b": (35, 35, 384), "Mixed_5e": (35, 35, 384), "Mixed_6a": (17, 17, 1024),
        "Mixed_6h": (17, 17, 1024), "Mixed_7a": (8, 8, 1536), "Mixed_7d": (8, 8, 1536),
    }
    out = model(np.zeros((1, 299, 299, 3), np.float32), training=False)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "logits": (1, 1001), "pre_logits": (1, 1536), "aux_logits": (1, 1001), "aux_pre_logits": (1, 768)}


def test_parameter_count_matches_slim(default_net):
    model = default_net
    variables = nets.slim_variables(model)
    count = {name: int(np.prod(v.shape)) for name, v in variables.items()}
    without_aux = sum(n for name, n in count.items() if not name.startswith("InceptionV4/AuxLogits/"))
    # Inception v4 is known as a 42.7M-parameter net (1001 classes, no aux head);
    # these are the exact counts of slim's variables (incl. BatchNorm moving statistics).
    assert without_aux == 42_712_937
    assert sum(count.values()) == 46_074_066


def test_batch_norm_is_slims(default_net):
    model = default_net
    batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    # stem 11 + 4x7 (A) + 4 (Reduction-A) + 7x10 (B) + 6 (Reduction-B) + 3x10 (C) + 2 (aux)
    assert len(batch_norms) == len(convs) == 151
    for layer in batch_norms:
        assert (layer.scale, layer.center, layer.epsilon, layer.momentum) == (False, True, 0.001, 0.9997)
        assert layer.gamma is None
    assert not [name for name in nets.slim_variables(model) if "gamma" in name]
    assert all(layer.use_bias is False for layer in convs)


def test_default_size_equals_the_plain_tf_computation(default_net, slim_values):
    # At 299 px every padding and stride acts on large maps and the aux head
    # uses slim's own 5x5/3 pool. Weights: random values assigned by slim name.
    model = default_net
    variables = nets.slim_variables(model)
    values = slim_values({n: tuple(v.shape) for n, v in variables.items()}, seed=11)
    for name, var in variables.items():
        var.assign(values[name])
    images = np.random.default_rng(1).uniform(-1, 1, (1, 299, 299, 3)).astype(np.float32)

    expected = SlimReference(values)(tf.constant(images))
    actual = model(images, training=False)
    for key in ("pre_logits", "logits", "aux_pre_logits", "aux_logits"):
        _close(actual[key], expected[key], key)
