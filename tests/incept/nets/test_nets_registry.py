"""The registry, the tiny net and the slim naming convention (fast: tiny net only)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import incept.nets as nets


def test_registry_lists_both_nets_with_slim_facts():
    v4 = nets.net_info("inception_v4")
    assert (v4.scope, v4.default_image_size, v4.min_image_size) == ("InceptionV4", 299, 75)
    assert v4.head_scopes == ("InceptionV4/Logits", "InceptionV4/AuxLogits/Aux_logits")
    assert v4.head_layers == ("Logits.Logits", "AuxLogits.Aux_logits")
    assert set(nets.NETS) >= {"inception_v4", "tiny"}


def test_unknown_net_and_too_small_images_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        nets.build("resnet", 5)
    with pytest.raises(ValueError, match="at least 75 px"):
        nets.build("inception_v4", 5, image_size=74)


def test_tiny_net_outputs_and_heads():
    model = nets.build("tiny", 5, image_size=32)
    info = nets.net_info("tiny")
    out = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert set(out) == {"logits", "pre_logits", "aux_logits", "aux_pre_logits"}
    assert out["logits"].shape == (2, 5) and out["aux_logits"].shape == (2, 5)
    for layer_name in info.head_layers:
        assert isinstance(model.get_layer(layer_name), keras.layers.Dense)
    assert isinstance(model.get_layer(info.dropout_layer), keras.layers.Dropout)


def test_slim_names_follow_the_layer_names():
    model = nets.build("tiny", 5)
    names = nets.slim_variables(model)
    conv = model.get_layer("Conv2d_1a_3x3")
    bn = model.get_layer("Conv2d_1a_3x3.BatchNorm")
    assert names["TinyNet/Conv2d_1a_3x3/weights"] is conv.kernel
    assert names["TinyNet/Conv2d_1a_3x3/BatchNorm/beta"] is bn.beta
    assert names["TinyNet/Conv2d_1a_3x3/BatchNorm/moving_mean"] is bn.moving_mean
    assert names["TinyNet/Conv2d_1a_3x3/BatchNorm/moving_variance"] is bn.moving_variance
    assert names["TinyNet/Logits/Logits/biases"] is model.get_layer("Logits.Logits").bias
    assert names["TinyNet/AuxLogits/Aux_logits/weights"] is model.get_layer("AuxLogits.Aux_logits").kernel
    # slim's batch_norm(scale=False): no gamma anywhere.
    assert not [n for n in names if n.endswith("/gamma")]
    assert len(names) == len(model.weights)


def test_scope_filters_select_the_heads():
    model = nets.build("tiny", 5)
    heads = nets.variables_under(model, nets.net_info("tiny").head_scopes)
    assert sorted(heads) == [
        "TinyNet/AuxLogits/Aux_logits/biases", "TinyNet/AuxLogits/Aux_logits/weights",
        "TinyNet/Logits/Logits/biases", "TinyNet/Logits/Logits/weights",
    ]
    layer_names = [layer.name for layer in nets.layers_under(model, ["TinyNet/AuxLogits"])]
    assert "AuxLogits.Conv2d_1b_1x1" in layer_names and "Logits.Logits" not in layer_names
    # A scope is a path prefix, not a string prefix.
    assert not nets.variables_under(model, ["TinyNet/Logits/Logit"])


def test_the_registry_is_full_for_every_thread_that_asks_first():
    """Threads asking for a net at the same time, in a fresh interpreter (the
    gateway's first job submissions): every one finds it (issue 14, 11b)."""
    import subprocess
    import sys

    code = """
import sys, threading
import incept.nets.factory as factory
sys.setswitchinterval(1e-6)  # switch threads as often as possible
barrier = threading.Barrier(16)
failures = []
def ask():
    barrier.wait()
    for name in ("inception_v4", "tiny"):
        try:
            factory.net_info(name)
        except ValueError as e:
            failures.append(str(e))
threads = [threading.Thread(target=ask) for _ in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(failures), failures[:1])
"""
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, check=True).stdout
        assert out.startswith("0 "), out
