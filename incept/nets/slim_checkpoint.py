"""Load a TF-slim checkpoint (e.g. the official ``inception_v4_2016_09_09.ckpt``)
into a net built by ``incept.nets.build``, by slim variable name.

All or nothing: every check (missing variables, shape mismatches) runs before
the first assignment, so an error never leaves a half-loaded model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from incept.errors import UserError
from incept.nets.factory import slim_variables
from incept.spec import under_scope


class SlimCheckpointError(UserError):
    """The checkpoint cannot be read or does not fit the model."""


@dataclass(frozen=True)
class LoadReport:
    # Slim names of the model variables assigned from the checkpoint.
    loaded: tuple[str, ...]
    # Checkpoint entries not loaded: under exclude_scopes, training state
    # (global_step, moving-average shadows, optimizer slots), or not in the model.
    skipped: tuple[str, ...]
    # Model variables absent from the checkpoint (only ever non-empty with ignore_missing).
    missing: tuple[str, ...]
    # Model variables under exclude_scopes: left at their initial values.
    excluded: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} variables, skipped {len(self.skipped)} checkpoint "
                f"entries, {len(self.excluded)} excluded, {len(self.missing)} missing")


def _normalise_scopes(exclude_scopes) -> tuple[str, ...]:
    # Accept slim's flag form "A,B" as well as a sequence.
    if isinstance(exclude_scopes, str):
        exclude_scopes = exclude_scopes.split(",")
    return tuple(s.strip().rstrip("/") for s in exclude_scopes if s and s.strip())


def load_slim_checkpoint(model: keras.Model, ckpt_prefix, exclude_scopes=(),
                         ignore_missing: bool = False) -> LoadReport:
    """Assign every variable of ``model`` from the slim checkpoint at ``ckpt_prefix``.

    ``exclude_scopes`` works like slim's ``--checkpoint_exclude_scopes``: model
    variables under these scopes keep their initial values (and their shapes are
    not checked). A model variable missing from the checkpoint is an error unless
    ``ignore_missing``; a shape mismatch always is.
    """
    import tensorflow as tf

    scopes = _normalise_scopes(exclude_scopes)
    try:
        reader = tf.train.load_checkpoint(str(ckpt_prefix))
        ckpt_shapes = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as exc:
        raise SlimCheckpointError(f"cannot read checkpoint {ckpt_prefix}: {exc}") from exc

    model_vars = slim_variables(model)
    loaded, missing, excluded, to_assign = [], [], [], []
    for name, var in sorted(model_vars.items()):
        if under_scope(name, scopes):
            excluded.append(name)
            continue
        if name not in ckpt_shapes:
            missing.append(name)
            continue
        ckpt_shape = tuple(ckpt_shapes[name])
        model_shape = tuple(var.shape)
        if ckpt_shape != model_shape:
            raise SlimCheckpointError(
                f"variable {name}: checkpoint shape {list(ckpt_shape)} does not match the "
                f"model's {list(model_shape)} (different num_classes or image size? "
                f"exclude its scope with exclude_scopes)")
        loaded.append(name)
        to_assign.append((name, var))

    if missing and not ignore_missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SlimCheckpointError(
            f"{len(missing)} model variable(s) not in checkpoint {ckpt_prefix}: {shown} "
            f"(wrong model or checkpoint? pass ignore_missing to allow)")
    if not loaded:
        raise SlimCheckpointError(
            f"checkpoint {ckpt_prefix} has no variable of model {model.name!r}: nothing loaded")

    for name, var in to_assign:
        var.assign(np.asarray(reader.get_tensor(name), dtype=var.dtype))

    skipped = sorted(n for n in ckpt_shapes if n not in model_vars or under_scope(n, scopes))
    return LoadReport(loaded=tuple(loaded), skipped=tuple(skipped), missing=tuple(missing),
                      excluded=tuple(excluded))


__all__ = ["LoadReport", "SlimCheckpointError", "load_slim_checkpoint"]
