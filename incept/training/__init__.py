"""Fine-tuning from a job spec (see :func:`incept.training.trainer.train`).

Two paths, chosen from the spec's ``trainable_scopes``: head-only (the heads
train on cached frozen-backbone features, :mod:`incept.training.features`) and
full (a ``tf.data`` pipeline over the TFRecords, :mod:`incept.training.inputs`).
Both train the same model variables and write the same checkpoints
(:mod:`incept.checkpoints`)."""
