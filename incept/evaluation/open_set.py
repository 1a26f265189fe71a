"""Open-set scores: "is this image one of my classes at all?".

Every score is oriented so that HIGHER means MORE LIKELY UNKNOWN:

- ``max_softmax``: minus the largest softmax probability (Hendrycks & Gimpel).
- ``energy``: minus logsumexp of the logits (Liu et al., energy-based OOD).
- ``mahalanobis``: the smallest squared Mahalanobis distance of the pre-logits
  features to a class mean, with one covariance shared by all classes,
  estimated from the training features (Lee et al.).

``OpenSetScore`` is a Keras layer so the very same computation runs in the
evaluator and inside the exported SavedModel (its parameters are non-trainable
weights, saved with the model). ``bench/open_set.py`` compares the scores with
a held-out-class protocol. Its full run (5 folds of flower_photos_sample, tiny
net at 48 px) measured AUROC / FPR@95TPR: max_softmax 0.604 / 0.886, energy
0.603 / 0.884, Mahalanobis 0.558 / 0.957 (Mahalanobis was best only on the
non-flower photos alone: 0.689 vs 0.661). Energy ties the baseline, has the
lowest FPR and needs no pass over the training split at export time, so it is
``DEFAULT_SCORE``; Mahalanobis stays available (``score_name``) for backbones
whose features are richer than the tiny net's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from scipy.stats import rankdata

SCORES = ("mahalanobis", "energy", "max_softmax")
# Scores computed from the logits alone: nothing to fit on the training split.
LOGIT_SCORES = ("energy", "max_softmax")
DEFAULT_SCORE = "energy"
# Keep this share of in-distribution validation images (threshold calibration).
DEFAULT_TPR = 0.95
# Shrink the shared covariance towards a scaled identity so it stays invertible
# when there are fewer training images than feature dimensions.
SHRINKAGE = 0.1


@keras.saving.register_keras_serializable(package="incept")
class OpenSetScore(keras.layers.Layer):
    """``score(logits, pre_logits) -> [N]`` float32, higher = more unknown;
    ``is_unknown`` compares it with the calibrated ``threshold``."""

    def __init__(self, score_name: str = DEFAULT_SCORE, num_classes: int = 1,
                 feature_dim: int = 1, **kwargs):
        super().__init__(**kwargs)
        if score_name not in SCORES:
            raise ValueError(f"unknown open-set score {score_name!r}; known: {', '.join(SCORES)}")
        self.score_name = score_name
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)
        self.threshold = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                         name="threshold", dtype="float32")
        if score_name == "mahalanobis":
            # Means and features are both projected by L (precision = L L^T), so the
            # distance is a plain squared Euclidean one in the projected space.
            self.projection = self.add_weight(shape=(feature_dim, feature_dim),
                                              initializer="identity", trainable=False,
                                              name="projection", dtype="float32")
            self.projected_means = self.add_weight(shape=(num_classes, feature_dim),
                                                   initializer="zeros", trainable=False,
                                                   name="projected_means", dtype="float32")

    def call(self, logits, pre_logits):
        logits = tf.cast(logits, tf.float32)
        if self.score_name == "max_softmax":
            return -tf.reduce_max(tf.nn.softmax(logits, axis=-1), axis=-1)
        if self.score_name == "energy":
            return -tf.reduce_logsumexp(logits, axis=-1)
        z = tf.matmul(tf.cast(pre_logits, tf.float32), self.projection)
        diff = z[:, None, :] - self.projected_means[None, :, :]
        return tf.reduce_min(tf.reduce_sum(tf.square(diff), axis=-1), axis=-1)

    def is_unknown(self, scores):
        return scores > self.threshold

    def get_config(self):
        return {**super().get_config(), "score_name": self.score_name,
                "num_classes": self.num_classes, "feature_dim": self.feature_dim}

    # -- fitting ---------------------------------------------------------------

    def fit_features(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Estimate class means and the shared covariance from training features."""
        if self.score_name != "mahalanobis":
            return
        means, projection = mahalanobis_parameters(features, labels, self.num_classes)
        self.projection.assign(projection)
        self.projected_means.assign(means @ projection)

    def calibrate(self, in_distribution_scores: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
        """Set the threshold so ``tpr`` of the in-distribution scores are known."""
        threshold = calibrate_threshold(in_distribution_scores, tpr)
        self.threshold.assign(threshold)
        return threshold

    def describe(self) -> dict:
        return {"score_name": self.score_name, "threshold": float(self.threshold.numpy())}


def mahalanobis_parameters(features: np.ndarray, labels: np.ndarray,
                           num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means [C, D] and a projection L [D, D] with L L^T = shared precision."""
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    dim = features.shape[1]
    means = np.zeros((num_classes, dim))
    centered = np.zeros_like(features)
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            means[c] = features[mask].mean(axis=0)
            centered[mask] = features[mask] - means[c]
    cov = centered.T @ centered / max(len(features), 1)
    scale = max(float(np.trace(cov)) / dim, 1e-6)
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * scale * np.eye(dim)
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2
    projection = np.linalg.cholesky(precision)
    return means.astype(np.float32), projection.astype(np.float32)


def calibrate_threshold(in_distribution_scores: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
    """The smallest threshold with at least ``tpr`` of the scores at or below it."""
    scores = np.sort(np.asarray(in_distribution_scores, np.float64))
    if scores.size == 0:
        return math.inf
    index = min(scores.size - 1, max(0, math.ceil(tpr * scores.size) - 1))
    return float(scores[index])


@dataclass(frozen=True)
class OpenSetReport:
    score_name: str
    auroc: float
    fpr_at_95tpr: float


def auroc(known_scores: np.ndarray, unknown_scores: np.ndarray) -> float:
    """Probability that an unknown image scores higher than a known one (ties count half)."""
    known = np.asarray(known_scores, np.float64)
    unknown = np.asarray(unknown_scores, np.float64)
    if known.size == 0 or unknown.size == 0:
        return float("nan")
    # Mann-Whitney U with average ranks for ties.
    ranks = rankdata(np.concatenate([known, unknown]))
    rank_sum = ranks[known.size:].sum()
    u = rank_sum - unknown.size * (unknown.size + 1) / 2
    return float(u / (known.size * unknown.size))


def fpr_at_tpr(known_scores: np.ndarray, unknown_scores: np.ndarray,
               tpr: float = DEFAULT_TPR) -> float:
    """Share of unknown images accepted as known at the threshold keeping ``tpr`` of known ones."""
    unknown = np.asarray(unknown_scores, np.float64)
    if unknown.size == 0:
        return float("nan")
    threshold = calibrate_threshold(known_scores, tpr)
    return float((unknown <= threshold).mean())


def compare(known_scores: np.ndarray, unknown_scores: np.ndarray, score_name: str) -> OpenSetReport:
    return OpenSetReport(score_name, auroc(known_scores, unknown_scores),
                         fpr_at_tpr(known_scores, unknown_scores))


def fit_open_set(model, dataset_dir, *, image_size: int, num_classes: int,
                 validation=None, score_name: str = DEFAULT_SCORE, tpr: float = DEFAULT_TPR,
                 batch_size: int = 32, forward=None) -> tuple[OpenSetScore, dict]:
    """An ``OpenSetScore`` for ``model``: fitted on the training split's features
    (Mahalanobis only) and calibrated on the validation split to keep ``tpr`` of
    in-distribution images. ``validation`` may pass already computed
    ``SplitOutputs``. Returns the layer and the calibration record."""
    from incept.evaluation.metrics import run_split

    if validation is None:
        validation = run_split(model, dataset_dir, "validation", image_size=image_size,
                               batch_size=batch_size, forward=forward)
    layer = OpenSetScore(score_name, num_classes, validation.pre_logits.shape[1])
    fitted_on = 0
    if score_name == "mahalanobis":
        train = run_split(model, dataset_dir, "train", image_size=image_size, batch_size=batch_size,
                          forward=forward)
        layer.fit_features(train.pre_logits, train.labels)
        fitted_on = len(train)
    scores = layer(validation.logits, validation.pre_logits).numpy()
    threshold = layer.calibrate(scores, tpr)
    record = {"score_name": score_name, "threshold": threshold,
              "tpr": float((scores <= threshold).mean()), "target_tpr": tpr,
              "calibrated_on": len(validation), "fitted_on": fitted_on}
    return layer, record
