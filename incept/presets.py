"""Ready-made job specs the page offers (and anyone can start from): every one
is a valid :class:`~incept.spec.JobSpec` once a dataset is named."""

from __future__ import annotations

from typing import Any

_HEADS = ["InceptionV4/Logits", "InceptionV4/AuxLogits/Aux_logits"]
_SLIM_CHECKPOINT = "pretrained/inception_v4/inception_v4.ckpt"

PRESETS: dict[str, dict[str, Any]] = {
    "seed": {
        "title": "Seed recipe: fine-tune the heads of Inception v4",
        "description": "The seed's head-only recipe from the official slim checkpoint: backbone "
                       "features are computed once and cached, then the heads train in seconds.",
        "spec": {"model_name": "inception_v4", "checkpoint": _SLIM_CHECKPOINT,
                 "exclude_scopes": _HEADS, "trainable_scopes": _HEADS, "optimizer": "adam",
                 "learning_rate": 0.001, "learning_rate_decay_factor": 0.76,
                 "num_epochs_per_decay": 50, "moving_average_decay": 0.9999, "batch_size": 32,
                 "epochs": 100, "augmented_views": 4, "checkpoint_every_steps": 1000},
    },
    "full": {
        "title": "Full fine-tune of Inception v4",
        "description": "Every layer trains from the slim checkpoint, with a smaller learning rate: "
                       "slower (a GPU helps), sometimes more accurate on photos unlike ImageNet.",
        "spec": {"model_name": "inception_v4", "checkpoint": _SLIM_CHECKPOINT,
                 "exclude_scopes": _HEADS, "optimizer": "adam", "learning_rate": 0.0001,
                 "learning_rate_decay_factor": 0.94, "num_epochs_per_decay": 2,
                 "moving_average_decay": 0.9999, "batch_size": 32, "epochs": 10},
    },
    "tiny": {
        "title": "Tiny demo (seconds on a CPU)",
        "description": "The tiny test network trained from scratch at 32 px: shows the whole "
                       "path (train, evaluate, export, serve) in about a minute.",
        "spec": {"model_name": "tiny", "image_size": 32, "optimizer": "adam",
                 "learning_rate": 0.01, "opt_epsilon": 0.001, "learning_rate_decay_factor": 0.9,
                 "num_epochs_per_decay": 10, "moving_average_decay": 0.99, "batch_size": 16,
                 "max_steps": 300, "checkpoint_every_steps": 100},
    },
}
