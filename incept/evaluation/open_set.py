"""Open-set scores: "is this image one of my classes at all?".

Every score is oriented so that HIGHER means MORE LIKELY UNKNOWN:

- ``max_softmax``: minus the largest softmax probability (Hendrycks & Gimpel).
- ``energy``: minus logsumexp of the logits (Liu et al., energy-based OOD).
- ``mahalanobis``: the smallest squared Mahalanobis distance of the pre-logits
  features to a class mean, with one covariance shared by all classes,
  estimated from the training features (Lee et al.).
- ``mahalanobis_l2``: the same on L2-normalised pre-logits (directions only).
- ``mahalanobis_classwise``: L2-normalised, one shrunk covariance per class.
- ``relative_mahalanobis``: ``mahalanobis_l2`` minus the distance to one
  Gaussian of all training features, whatever their class (Ren et al.).
- ``cosine``: one minus the largest cosine similarity to a class mean.
- ``energy_mahalanobis``: energy plus ``mahalanobis_l2``, each standardised
  on the validation images.

``OpenSetScore`` is a Keras layer so the very same computation runs in the
evaluator and inside the exported SavedModel (its parameters are non-trainable
weights, saved with the model; stock TF ops only). ``bench/open_set.py``
compares the scores with a held-out-class protocol on flower_photos_sample
(tiny net, random init): near-OOD = the held-out flower class, far-OOD =
scikit-image's non-flower photos (cat, astronaut, rocket, ...). Full runs,
far-OOD photos flagged at the 95 %-TPR threshold / near AUROC / far AUROC:

    64 px, 1500 steps:  max_softmax 0.078/0.584/0.705  energy 0.133/0.598/0.680
                        mahalanobis 0.078/0.582/0.687  mahalanobis_l2 0.333/0.646/0.812
    48 px, 600 steps:   max_softmax 0.089/0.597/0.653  energy 0.122/0.596/0.637
                        mahalanobis 0.122/0.541/0.692  mahalanobis_l2 0.256/0.651/0.781

(the other scores lie within a few points of ``mahalanobis_l2``). The
normalisation is what matters: the tiny net's raw feature norms mostly say
how contrasted an image is. ``mahalanobis_l2`` flagged the most far-OOD
photos on average, without losing near-OOD AUROC against max-softmax, with one
D x D matrix (the class-wise variant needs C of them), so it is
``DEFAULT_SCORE``. It needs the training split's features: ``fit_open_set``
computes them (cached per backbone for head-only jobs, ``training_features``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from scipy.stats import rankdata

from incept.fsutil import write_bytes_atomic

SCORES = ("mahalanobis", "mahalanobis_l2", "mahalanobis_classwise", "relative_mahalanobis",
          "cosine", "energy_mahalanobis", "energy", "max_softmax")
# Scores computed from the logits alone: nothing to fit on the training split.
LOGIT_SCORES = ("energy", "max_softmax")
# Scores on L2-normalised pre-logits (directions, not magnitudes).
NORMALISED_SCORES = ("mahalanobis_l2", "mahalanobis_classwise", "relative_mahalanobis",
                     "cosine", "energy_mahalanobis")
DEFAULT_SCORE = "mahalanobis_l2"
# Keep this share of in-distribution validation images (threshold calibration).
DEFAULT_TPR = 0.95
# Shrink a covariance towards a scaled identity so it stays invertible when
# there are fewer images than feature dimensions; a class's own covariance is
# estimated from a fifth of the images or fewer, so it is shrunk harder.
SHRINKAGE = 0.1
CLASSWISE_SHRINKAGE = 0.5


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
        self.num_classes = c = int(num_classes)
        self.feature_dim = d = int(feature_dim)
        self.threshold = self._constant("threshold", ())
        if score_name in ("mahalanobis", "mahalanobis_l2", "relative_mahalanobis",
                          "energy_mahalanobis"):
            # Means and features are both projected by L (precision = L L^T), so the
            # distance is a plain squared Euclidean one in the projected space.
            self.projection = self._constant("projection", (d, d), "identity")
            self.projected_means = self._constant("projected_means", (c, d))
        if score_name == "mahalanobis_classwise":
            self.class_projections = self._constant("class_projections", (c, d, d))
            self.projected_means = self._constant("projected_means", (c, d))
        if score_name == "relative_mahalanobis":
            # One Gaussian for all training features, whatever their class (Ren et al.).
            self.background_projection = self._constant("background_projection", (d, d), "identity")
            self.projected_background_mean = self._constant("projected_background_mean", (d,))
        if score_name == "cosine":
            self.unit_means = self._constant("unit_means", (c, d))
        if score_name == "energy_mahalanobis":
            # Mean and standard deviation of (energy, Mahalanobis) on validation images.
            self.part_mean = self._constant("part_mean", (2,))
            self.part_std = self._constant("part_std", (2,), "ones")

    def _constant(self, name, shape, initializer="zeros"):
        return self.add_weight(shape=shape, initializer=initializer, trainable=False,
                               name=name, dtype="float32")

    def call(self, logits, pre_logits):
        logits = tf.cast(logits, tf.float32)
        name = self.score_name
        if name == "max_softmax":
            return -tf.reduce_max(tf.nn.softmax(logits, axis=-1), axis=-1)
        if name == "energy":
            return -tf.reduce_logsumexp(logits, axis=-1)
        x = tf.cast(pre_logits, tf.float32)
        if name in NORMALISED_SCORES:
            x = tf.math.l2_normalize(x, axis=-1)
        if name == "cosine":
            return 1.0 - tf.reduce_max(tf.matmul(x, self.unit_means, transpose_b=True), axis=-1)
        if name == "mahalanobis_classwise":
            z = tf.einsum("nd,cde->nce", x, self.class_projections)
            return tf.reduce_min(tf.reduce_sum(tf.square(z - self.projected_means), -1), -1)
        distance = self._class_distance(x)
        if name == "relative_mahalanobis":
            background = tf.matmul(x, self.background_projection) - self.projected_background_mean
            return distance - tf.reduce_sum(tf.square(background), axis=-1)
        if name == "energy_mahalanobis":
            parts = tf.stack([-tf.reduce_logsumexp(logits, axis=-1), distance], axis=-1)
            return tf.reduce_sum((parts - self.part_mean) / self.part_std, axis=-1)
        return distance

    def _class_distance(self, x):
        """Squared Mahalanobis distance to the nearest class mean (shared covariance)."""
        z = tf.matmul(x, self.projection)
        diff = z[:, None, :] - self.projected_means[None, :, :]
        return tf.reduce_min(tf.reduce_sum(tf.square(diff), axis=-1), axis=-1)

    def is_unknown(self, scores):
        return scores > self.threshold

    def get_config(self):
        return {**super().get_config(), "score_name": self.score_name,
                "num_classes": self.num_classes, "feature_dim": self.feature_dim}

    # -- fitting ---------------------------------------------------------------

    @property
    def needs_training_features(self) -> bool:
        return self.score_name not in LOGIT_SCORES

    def fit_features(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Estimate class means and covariances from training features."""
        name = self.score_name
        if name in LOGIT_SCORES:
            return
        features = np.asarray(features, np.float64)
        if name in NORMALISED_SCORES:
            features = l2_normalise(features)
        if name == "cosine":
            means, _ = class_means(features, labels, self.num_classes)
            self.unit_means.assign(l2_normalise(means).astype(np.float32))
            return
        if name == "mahalanobis_classwise":
            means, _ = class_means(features, labels, self.num_classes)
            projections = np.stack([
                precision_factor(features[labels == c] - means[c], CLASSWISE_SHRINKAGE)
                if np.any(labels == c) else np.eye(features.shape[1])
                for c in range(self.num_classes)])
            self.class_projections.assign(projections.astype(np.float32))
            self.projected_means.assign(
                np.einsum("cd,cde->ce", means, projections).astype(np.float32))
            return
        means, projection = mahalanobis_parameters(features, labels, self.num_classes)
        self.projection.assign(projection)
        self.projected_means.assign(means @ projection)
        if name == "relative_mahalanobis":
            mean = features.mean(axis=0)
            background = precision_factor(features - mean, SHRINKAGE)
            self.background_projection.assign(background.astype(np.float32))
            self.projected_background_mean.assign((mean @ background).astype(np.float32))

    def fit_scale(self, logits: np.ndarray, pre_logits: np.ndarray) -> None:
        """Standardise the parts of a combined score on in-distribution (validation)
        outputs, so each part weighs the same."""
        if self.score_name != "energy_mahalanobis":
            return
        energy = -tf.reduce_logsumexp(tf.cast(logits, tf.float32), axis=-1).numpy()
        x = tf.math.l2_normalize(tf.cast(pre_logits, tf.float32), axis=-1)
        distance = self._class_distance(x).numpy()
        parts = np.stack([energy, distance], axis=-1).astype(np.float64)
        self.part_mean.assign(parts.mean(axis=0).astype(np.float32))
        self.part_std.assign(np.maximum(parts.std(axis=0), 1e-6).astype(np.float32))

    def calibrate(self, in_distribution_scores: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
        """Set the threshold so ``tpr`` of the in-distribution scores are known."""
        threshold = calibrate_threshold(in_distribution_scores, tpr)
        self.threshold.assign(threshold)
        return threshold

    def describe(self) -> dict:
        return {"score_name": self.score_name, "threshold": float(self.threshold.numpy())}


def l2_normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def class_means(features: np.ndarray, labels: np.ndarray,
                num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means [C, D] and each feature minus its class mean."""
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    means = np.zeros((num_classes, features.shape[1]))
    centered = np.zeros_like(features)
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            means[c] = features[mask].mean(axis=0)
            centered[mask] = features[mask] - means[c]
    return means, centered


def precision_factor(centered: np.ndarray, shrinkage: float) -> np.ndarray:
    """L [D, D] with L L^T = the inverse of the shrunk covariance of ``centered``."""
    dim = centered.shape[1]
    cov = centered.T @ centered / max(len(centered), 1)
    scale = max(float(np.trace(cov)) / dim, 1e-12)
    cov = (1 - shrinkage) * cov + shrinkage * scale * np.eye(dim)
    precision = np.linalg.inv(cov)
    return np.linalg.cholesky((precision + precision.T) / 2)


def mahalanobis_parameters(features: np.ndarray, labels: np.ndarray,
                           num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means [C, D] and a projection L [D, D] with L L^T = shared precision."""
    means, centered = class_means(features, labels, num_classes)
    return means.astype(np.float32), precision_factor(centered, SHRINKAGE).astype(np.float32)


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


def backbone_digest(model) -> str:
    """A digest of every weight that ``pre_logits`` depends on: all but the
    head branches (layers named ``Logits.*`` / ``AuxLogits.*``, the nets'
    naming convention). Equal digests give equal training features."""
    digest = hashlib.sha256()
    for layer in model.layers:
        if layer.name.split(".")[0] in ("Logits", "AuxLogits"):
            continue
        for weight in layer.weights:
            digest.update(weight.path.encode())
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:32]


def training_features(model, dataset_dir, *, image_size: int, batch_size: int = 32,
                      forward=None, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The training split's ``pre_logits`` and labels. With ``cache_dir`` they
    are kept per (backbone weights, dataset, image size): a job whose backbone
    is frozen (head-only fine-tuning) pays for one pass over the training
    split, not one per checkpoint."""
    from incept.data.dataset import DatasetInfo
    from incept.evaluation.metrics import run_split

    path = None
    if cache_dir is not None:
        key = hashlib.sha256(json.dumps([backbone_digest(model), DatasetInfo.load(dataset_dir).fingerprint,
                                         image_size]).encode()).hexdigest()[:32]
        path = Path(cache_dir) / f"{key}.npz"
        try:
            with np.load(path) as cached:
                return cached["pre_logits"], cached["labels"]
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
            pass  # not cached yet (or unreadable): compute it
    train = run_split(model, dataset_dir, "train", image_size=image_size, batch_size=batch_size,
                      forward=forward)
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, pre_logits=train.pre_logits, labels=train.labels)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buf.getvalue())
    return train.pre_logits, train.labels


def fit_open_set(model, dataset_dir, *, image_size: int, num_classes: int,
                 validation=None, score_name: str = DEFAULT_SCORE, tpr: float = DEFAULT_TPR,
                 batch_size: int = 32, forward=None,
                 cache_dir: Path | None = None) -> tuple[OpenSetScore, dict]:
    """An ``OpenSetScore`` for ``model``: fitted on the training split's features
    (every score but the logit ones; see ``training_features`` for
    ``cache_dir``) and calibrated on the validation split to keep ``tpr`` of
    in-distribution images. ``validation`` may pass already computed
    ``SplitOutputs``. Returns the layer and the calibration record."""
    from incept.evaluation.metrics import run_split

    if validation is None:
        validation = run_split(model, dataset_dir, "validation", image_size=image_size,
                               batch_size=batch_size, forward=forward)
    layer = OpenSetScore(score_name, num_classes, validation.pre_logits.shape[1])
    fitted_on = 0
    if layer.needs_training_features:
        features, labels = training_features(model, dataset_dir, image_size=image_size,
                                             batch_size=batch_size, forward=forward,
                                             cache_dir=cache_dir)
        layer.fit_features(features, labels)
        fitted_on = len(labels)
    return layer, calibrate_open_set(layer, validation, fitted_on, tpr)


def calibrate_open_set(layer: OpenSetScore, validation, fitted_on: int,
                       tpr: float = DEFAULT_TPR) -> dict:
    """Scale (for scores that need it) and threshold a fitted ``layer`` on the
    validation ``SplitOutputs``; returns the calibration record."""
    layer.fit_scale(validation.logits, validation.pre_logits)
    scores = layer(validation.logits, validation.pre_logits).numpy()
    threshold = layer.calibrate(scores, tpr)
    return {"score_name": layer.score_name, "threshold": threshold,
            "tpr": float((scores <= threshold).mean()), "target_tpr": tpr,
            "calibrated_on": len(validation), "fitted_on": fitted_on}
