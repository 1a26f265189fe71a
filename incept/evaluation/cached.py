"""A head-only job evaluated on its cached backbone features.

The backbone of a head-only job is frozen, so a checkpoint's validation
outputs are its heads applied to the validation split's ``pre_logits``, and
its open-set fit needs the training split's ``pre_logits``: both are in the
feature cache the trainer filled (``incept.training.features``; computed
here once, and stored the same way, when it is missing). Per checkpoint that
leaves restoring the heads, two small matrix products and the open-set
calibration -- the backbone does not run again.

``HeadOnlyJob`` keeps one job's built model, export archive and features in
the evaluator's memory, so a job's later checkpoints pay for none of the
model build, the export's trace and graph, or reading the cache again.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from incept.evaluation.metrics import SplitOutputs

log = logging.getLogger(__name__)


def job_features(model, spec, layout, dataset_dir, *, compute: bool = True) -> dict:
    """{"train": the views the job trained on, "validation": the evaluation
    view}, as ``SplitFeatures``, from the cache (computed and stored if missing,
    unless ``compute`` is False: then ``features.NotCached`` is raised)."""
    from incept.training import features
    from incept.training.state import resolve_checkpoint

    size = spec.resolved_image_size()
    key = features.backbone_key(spec.model_name, size, resolve_checkpoint(layout, spec.checkpoint),
                                spec.seed)
    return features.cached_features(model, layout.feature_cache, key, dataset_dir, size,
                                    spec.seed, {"train": features.views_of(spec),
                                                "validation": [0]}, compute=compute)


def heads_fn(model, model_name: str):
    """The logits head on ``pre_logits`` exactly as the full model applies it
    (dropout in inference mode), as one traced function for any batch."""
    from incept.nets import net_info

    net = net_info(model_name)
    logits_layer, dropout = model.get_layer(net.head_layers[0]), model.get_layer(net.dropout_layer)
    dim = int(model.output["pre_logits"].shape[-1])

    @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32)])
    def heads(pre_logits):
        return tf.cast(logits_layer(dropout(pre_logits, training=False)), tf.float32)

    return heads


def validation_outputs(heads, validation) -> SplitOutputs:
    """The checkpoint's ``SplitOutputs`` of the validation split from its cached view."""
    pre_logits = np.asarray(validation.views[0]["pre_logits"], np.float32)
    return SplitOutputs(heads(pre_logits).numpy(), pre_logits,
                        validation.labels.astype(np.int64), filenames=validation.filenames)


def _open_set_score(num_classes: int, feature_dim: int):
    from incept.evaluation.open_set import OpenSetScore

    layer = OpenSetScore(num_classes=num_classes, feature_dim=feature_dim)
    # Built (called once), so an export can be traced before it is fitted: the fit
    # and each calibration assign its variables, which every version then reads.
    layer(np.zeros((1, num_classes), np.float32), np.zeros((1, feature_dim), np.float32))
    return layer


def training_features(train) -> tuple[np.ndarray, np.ndarray]:
    """The open-set fit's training features: every cached view of every
    training image (the evaluation view when the job does not augment), float32."""
    features = train.concatenated("pre_logits").astype(np.float32)
    return features, np.tile(train.labels, len(train.views))


class HeadOnlyJob:
    """One head-only job: its model, built once and restored per checkpoint,
    its export archive (the serving function traced and its graph written
    once: ``incept.export.ServingArchive``), its cached features and its
    open-set score, fitted once on the training features (they do not change
    between checkpoints; the calibration on the validation outputs does, and
    is redone per checkpoint).

    The model and the archive need no features: the evaluator gets them ready
    while the trainer's feature pass runs. The features are read once the
    cache is complete; without one (evicted, another machine) checkpoint
    ``step`` gives the backbone to compute the missing features with."""

    def __init__(self, layout, run, dataset_dir):
        from incept.checkpoints import InferenceRestorer

        self.layout, self.dataset_dir = layout, dataset_dir
        self.restorer = InferenceRestorer(run, layout)
        spec, model = self.restorer.spec, self.restorer.model
        dim = int(model.output["pre_logits"].shape[-1])
        self.heads = heads_fn(model, spec.model_name)
        self.heads(np.zeros((1, dim), np.float32))  # traced now, not at the first checkpoint
        self.open_set = _open_set_score(len(self.restorer.class_names), dim)
        self.fitted_on = 0
        self.archive = None
        self.validation = self.train = None
        self.feature_views = {"cached": 0, "computed": 0}

    @property
    def has_features(self) -> bool:
        return self.validation is not None

    def read_features(self, step: int | None = None, *, compute: bool = True) -> None:
        """The job's features from the cache (computed from checkpoint ``step``,
        the newest by default, and stored when missing, unless ``compute`` is
        False: then ``features.NotCached`` is raised), and the open-set fit."""
        from incept.training.features import NotCached

        if self.has_features:
            return
        spec, model = self.restorer.spec, self.restorer.model
        try:
            found = job_features(None, spec, self.layout, self.dataset_dir, compute=False)
        except NotCached:
            if not compute:
                raise
            self.restorer.restore(step)  # the backbone all the job's checkpoints share
            found = job_features(model, spec, self.layout, self.dataset_dir)
        # What the feature cache gave this job: views read from it, views the
        # evaluator had to compute (then stored) because the cache lacked them.
        self.feature_views = {"cached": sum(f.hits for f in found.values()),
                              "computed": sum(f.computed for f in found.values())}
        if self.open_set.needs_training_features:
            features, labels = training_features(found["train"])
            self.open_set.fit_features(features, labels)
            self.fitted_on = len(labels)
        self.validation, self.train = found["validation"], found["train"]

    def export_archive(self):
        """The serving function of this job's model and open-set score, traced
        (their weights are read when a version is written: ``ServingArchive``)."""
        from incept.export import build_archive

        if self.archive is None:
            spec = self.restorer.spec
            self.archive = build_archive(self.restorer.model, self.restorer.class_names,
                                         image_size=spec.resolved_image_size(), ood=self.open_set)
        return self.archive

    def evaluate(self, step: int):
        """(RestoredModel, validation SplitOutputs, (OpenSetScore, calibration record))."""
        from incept.evaluation.open_set import calibrate_open_set

        self.read_features(step)
        restored = self.restorer.restore(step, frozen_unchanged=True)
        outputs = validation_outputs(self.heads, self.validation)
        record = calibrate_open_set(self.open_set, outputs, self.fitted_on)
        return restored, outputs, (self.open_set, record)
