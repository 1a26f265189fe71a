"""Open-set scores: orientation, fitting, calibration, AUROC/FPR."""

from __future__ import annotations

import numpy as np
import pytest

from incept.evaluation.open_set import (
    OpenSetScore,
    auroc,
    calibrate_threshold,
    fpr_at_tpr,
)


def test_auroc_and_fpr():
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    known = np.arange(100.0)
    assert fpr_at_tpr(known, [200.0, 10.0], 0.95) == 0.5
    t = calibrate_threshold(known, 0.95)
    assert (known <= t).mean() >= 0.95 and (known < t).mean() < 0.95


def test_mahalanobis_finds_far_features():
    rng = np.random.default_rng(0)
    d, c = 6, 3
    centers = rng.normal(size=(c, d)) * 5
    labels = rng.integers(0, c, size=300)
    # Anisotropic shared covariance: distances must use it, not plain Euclid.
    scale = np.array([5.0, 0.2, 1, 1, 1, 1])
    train = centers[labels] + rng.normal(size=(300, d)) * scale
    layer = OpenSetScore("mahalanobis", c, d)
    layer.fit_features(train, labels)
    near = centers[0] + np.array([8.0, 0, 0, 0, 0, 0])  # far in Euclid, along the wide axis
    far = centers[0] + np.array([0, 1.6, 0, 0, 0, 0])  # near in Euclid, across the thin axis
    s = layer(np.zeros((2, c), np.float32), np.stack([near, far]).astype(np.float32)).numpy()
    assert s[1] > s[0]
    known = layer(np.zeros((300, c), np.float32), train.astype(np.float32)).numpy()
    thr = layer.calibrate(known)
    assert layer.describe() == {"score_name": "mahalanobis", "threshold": pytest.approx(thr)}
    assert 0.94 <= 1 - np.mean(layer.is_unknown(known)) <= 0.97


def test_logit_scores_are_oriented():
    logits = np.array([[10.0, 0, 0], [0.1, 0, 0]], np.float32)
    for name in ("energy", "max_softmax"):
        s = OpenSetScore(name, 3, 4)(logits, np.zeros((2, 4), np.float32)).numpy()
        assert s[1] > s[0], name
    with pytest.raises(ValueError):
        OpenSetScore("nope", 3, 4)
