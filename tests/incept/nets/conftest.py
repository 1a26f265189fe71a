"""Helpers for the nets tests: write a checkpoint the way slim's Saver stores
it (tensors under slim's variable names, TF's V2 checkpoint format)."""

from __future__ import annotations

import numpy as np
import pytest


def save_slim_checkpoint(prefix, tensors: dict[str, np.ndarray]) -> str:
    """Write ``tensors`` to a V2 checkpoint at ``prefix`` (as tf.compat.v1 Saver does)."""
    import tensorflow as tf

    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return str(prefix)


def random_slim_values(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Distinct random values per variable, scaled like a trained net so
    activations stay in a sane range through a deep net."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in sorted(shapes.items()):
        leaf = name.rsplit("/", 1)[-1]
        if leaf == "weights":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif leaf == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # biases, beta, moving_mean
            value = rng.normal(0.0, 0.1, shape)
        out[name] = value.astype(np.float32)
    return out


@pytest.fixture(scope="session")
def write_slim_checkpoint():
    return save_slim_checkpoint


@pytest.fixture(scope="session")
def slim_values():
    return random_slim_values
