"""The nets factory: one registry entry per architecture, as in TF-slim.

Naming convention (shared by every net, so checkpoint loading is mechanical):
Keras 3 forbids '/' in layer names, so a layer carries its slim scope relative
to the net's root with '.' for '/'. ``slim_variables`` maps every Keras
variable to the name slim gives it::

    layer "Mixed_6b.Branch_1.Conv2d_0b_1x7"      kernel -> InceptionV4/Mixed_6b/Branch_1/Conv2d_0b_1x7/weights
    layer "Mixed_6b.Branch_1.Conv2d_0b_1x7.BatchNorm"  beta -> .../Conv2d_0b_1x7/BatchNorm/beta
                                                  moving_mean, moving_variance likewise
    layer "Logits.Logits" (Dense)                 kernel -> InceptionV4/Logits/Logits/weights, bias -> .../biases

Every net returns a functional ``keras.Model`` whose outputs are a dict:
``logits`` [N, C], ``pre_logits`` [N, D] (pooled features before dropout),
and, for nets with an auxiliary head, ``aux_logits`` [N, C] and
``aux_pre_logits`` [N, D_aux] (the aux head's input to its final layer).
The heads are the layers named in ``NetInfo.head_layers``, so a trainer can
run them alone on cached features with the very same variables.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras

from incept.spec import under_scope

_VARIABLE_NAMES = {
    "kernel": "weights",
    "bias": "biases",
    "beta": "beta",
    "gamma": "gamma",
    "moving_mean": "moving_mean",
    "moving_variance": "moving_variance",
}


@dataclass(frozen=True)
class NetInfo:
    name: str
    builder: Callable[..., keras.Model]
    scope: str  # slim's root scope, e.g. "InceptionV4"
    default_image_size: int
    min_image_size: int
    # Dense layers of the heads, in the order (logits, aux_logits).
    head_layers: tuple[str, ...]
    # slim's --checkpoint_exclude_scopes / --trainable_scopes for "fine-tune the heads".
    head_scopes: tuple[str, ...]
    # Dropout layer applied to pre_logits before the logits layer.
    dropout_layer: str = "Logits.Dropout"


NETS: dict[str, NetInfo] = {}


def register(info: NetInfo) -> NetInfo:
    NETS[info.name] = info
    return info


def net_names() -> list[str]:
    """Every registered net (importing the built-in ones first)."""
    _load_builtin()
    return sorted(NETS)


def net_info(name: str) -> NetInfo:
    _load_builtin()
    try:
        return NETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(NETS))}") from None


def build(name: str = "inception_v4", num_classes: int = 1001, image_size: int | None = None,
          **kwargs) -> keras.Model:
    """Build a registered net. ``num_classes`` may include slim's background class."""
    info = net_info(name)
    size = image_size or info.default_image_size
    if size < info.min_image_size:
        raise ValueError(f"{name} needs images of at least {info.min_image_size} px, got {size}")
    return info.builder(num_classes=num_classes, image_size=size, **kwargs)


def slim_name(scope: str, layer_name: str, variable_name: str) -> str:
    short = variable_name.rsplit("/", 1)[-1].split(":")[0]
    return f"{scope}/{layer_name.replace('.', '/')}/{_VARIABLE_NAMES.get(short, short)}"


def slim_variables(model: keras.Model, scope: str | None = None) -> dict[str, keras.Variable]:
    """Every variable of ``model`` under the name slim gives it."""
    scope = scope or model.name
    out: dict[str, keras.Variable] = {}
    for layer in model.layers:
        for var in layer.weights:
            out[slim_name(scope, layer.name, var.name)] = var
    return out


def variables_under(model: keras.Model, scopes: Sequence[str]) -> dict[str, keras.Variable]:
    """slim's scope filter: the variables whose slim name starts with one of ``scopes``."""
    return {n: v for n, v in slim_variables(model).items() if under_scope(n, scopes)}


def layers_under(model: keras.Model, scopes: tuple[str, ...] | list[str]) -> list[keras.layers.Layer]:
    """The layers whose slim scope starts with one of ``scopes`` (for ``trainable``)."""
    return [layer for layer in model.layers
            if under_scope(f"{model.name}/{layer.name.replace('.', '/')}", scopes)]


_loaded = False
_load_lock = threading.Lock()


def _load_builtin() -> None:
    # Importing a net module registers it; kept lazy so `import incept.nets` is cheap.
    # The flag is set only once the registry is full, under a lock: a thread that
    # saw it set early would find no nets (the gateway runs routes in threads).
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if not _loaded:
            from incept.nets import inception_v4, tiny  # noqa: F401

            _loaded = True
