"""The feature-based open-set scores: each in-graph value equals a plain numpy
computation, calibration keeps 95 % of in-distribution images, and the default
score flags a cluster of outliers that the classifier head is confident about
(the "cat called a dandelion" case). Real TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from incept.evaluation.open_set import (
    CLASSWISE_SHRINKAGE,
    DEFAULT_SCORE,
    LOGIT_SCORES,
    SCORES,
    SHRINKAGE,
    OpenSetScore,
)

C, D = 3, 8


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def shrunk_precision(centered, shrinkage):
    cov = centered.T @ centered / len(centered)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return np.linalg.inv(cov)


def reference(name, train, labels, val_logits, val_feats, logits, feats):
    """The score of (logits, feats) computed directly from its definition."""
    energy = -np.log(np.exp(logits).sum(-1))
    x, t = unit(feats), unit(train)
    means = np.stack([t[labels == c].mean(0) for c in range(C)])
    centered = t - means[labels]

    def tied_min_distance(points):
        p = shrunk_precision(centered, SHRINKAGE)
        d = np.stack([np.einsum("nd,de,ne->n", points - m, p, points - m) for m in means], -1)
        return d.min(-1)

    if name == "mahalanobis_l2":
        return tied_min_distance(x)
    if name == "relative_mahalanobis":
        mu0 = t.mean(0)
        p0 = shrunk_precision(t - mu0, SHRINKAGE)
        return tied_min_distance(x) - np.einsum("nd,de,ne->n", x - mu0, p0, x - mu0)
    if name == "mahalanobis_classwise":
        d = []
        for c in range(C):
            p = shrunk_precision(t[labels == c] - means[c], CLASSWISE_SHRINKAGE)
            d.append(np.einsum("nd,de,ne->n", x - means[c], p, x - means[c]))
        return np.stack(d, -1).min(-1)
    if name == "cosine":
        return 1 - (x @ unit(means).T).max(-1)
    if name == "energy_mahalanobis":
        val_parts = np.stack([-np.log(np.exp(val_logits).sum(-1)),
                              tied_min_distance(unit(val_feats))], -1)
        parts = np.stack([energy, tied_min_distance(x)], -1)
        return ((parts - val_parts.mean(0)) / val_parts.std(0)).sum(-1)
    raise AssertionError(name)


def blobs(rng, n, centers, spread=1.0):
    labels = np.arange(n) % len(centers)
    return centers[labels] + rng.normal(size=(n, centers.shape[1])) * spread, labels


@pytest.mark.parametrize("name", ["mahalanobis_l2", "relative_mahalanobis",
                                  "mahalanobis_classwise", "cosine", "energy_mahalanobis"])
def test_in_graph_score_equals_numpy(name):
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(C, D)) * 3
    train, labels = blobs(rng, 120, centers)
    val, _ = blobs(rng, 30, centers)
    probe = rng.normal(size=(10, D)) * 4
    head = rng.normal(size=(D, C))
    layer = OpenSetScore(name, C, D)
    layer.fit_features(train, labels)
    layer.fit_scale(val @ head, val)
    got = layer((probe @ head).astype(np.float32), probe.astype(np.float32)).numpy()
    want = reference(name, train, labels, val @ head, val, probe @ head, probe)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


@pytest.mark.parametrize("name", SCORES)
def test_calibration_keeps_95_percent_of_in_distribution(name):
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(C, D)) * 3
    head = unit(centers).T * 3
    train, labels = blobs(rng, 300, centers)
    val, _ = blobs(rng, 400, centers)
    fresh, _ = blobs(rng, 2000, centers)
    layer = OpenSetScore(name, C, D)
    layer.fit_features(train, labels)
    layer.fit_scale(val @ head, val)
    val_scores = layer((val @ head).astype(np.float32), val.astype(np.float32))
    threshold = layer.calibrate(val_scores.numpy())
    assert layer.describe() == {"score_name": name, "threshold": pytest.approx(threshold)}
    kept = 1 - np.mean(layer.is_unknown(val_scores).numpy())
    assert 0.95 <= kept < 0.955
    # New images from the same distribution: close to 95 % kept as well.
    fresh_scores = layer((fresh @ head).astype(np.float32), fresh.astype(np.float32))
    assert 0.92 <= 1 - np.mean(layer.is_unknown(fresh_scores).numpy()) <= 0.98


def test_default_score_flags_a_confident_outlier_cluster():
    """Outliers the head calls class 0 with high confidence, but whose features
    point elsewhere: a logit score accepts them, the default score must not."""
    rng = np.random.default_rng(3)
    centers = np.eye(C, D) * 6 + 2  # classes along the first axes
    head = np.eye(D, C) * 2  # logit c = 2 * feature c
    train, labels = blobs(rng, 300, centers)
    val, _ = blobs(rng, 150, centers)
    outlier_center = np.zeros(D)
    outlier_center[0], outlier_center[C:] = 8, 9  # big logit 0, far off in directions
    outliers = outlier_center + rng.normal(size=(100, D))
    layer = OpenSetScore(DEFAULT_SCORE, C, D)
    layer.fit_features(train, labels)
    layer.fit_scale(val @ head, val)
    layer.calibrate(layer((val @ head).astype(np.float32), val.astype(np.float32)).numpy())
    flagged = layer.is_unknown(layer((outliers @ head).astype(np.float32),
                                     outliers.astype(np.float32))).numpy()
    assert flagged.mean() >= 0.95
    # The construction really is the hard case: the head is confident on them.
    energy = OpenSetScore("energy", C, D)
    energy.calibrate(energy((val @ head).astype(np.float32), val.astype(np.float32)).numpy())
    accepted = ~energy.is_unknown(energy((outliers @ head).astype(np.float32),
                                         outliers.astype(np.float32))).numpy()
    assert accepted.mean() >= 0.9
    assert DEFAULT_SCORE not in LOGIT_SCORES


def test_fit_cache_and_export_round_trip(tmp_path):
    """``fit_open_set`` on a real dataset and the tiny net: the training features
    are cached per backbone (a new head reuses them, a new backbone does not),
    and the exported SavedModel computes the same ``ood_score``/``is_unknown``."""
    import tensorflow as tf

    from incept import nets
    from incept.data.convert import convert
    from incept.data.synthetic import write_class_folders
    from incept.evaluation.open_set import fit_open_set
    from incept.export import export_model, read_manifest

    size = 32
    names = write_class_folders(tmp_path / "src", num_classes=3, per_class=12, size=(40, 32))
    convert(tmp_path / "src", tmp_path / "ds", validation_percent=25)
    tf.keras.utils.set_random_seed(4)
    model = nets.build("tiny", num_classes=3, image_size=size)
    cache = tmp_path / "cache"
    layer, record = fit_open_set(model, tmp_path / "ds", image_size=size, num_classes=3,
                                 cache_dir=cache)
    assert record["score_name"] == DEFAULT_SCORE and record["tpr"] >= 0.95
    assert record["fitted_on"] == 27 and record["calibrated_on"] == 9
    entries = sorted(cache.glob("*.npz"))
    assert len(entries) == 1

    # A cached entry is what the next fit reads: doctor it and the fit changes.
    with np.load(entries[0]) as cached:
        features, labels = cached["pre_logits"], cached["labels"]
    probe = np.random.default_rng(0).normal(size=(5, features.shape[1])).astype(np.float32)
    logits = np.zeros((5, 3), np.float32)
    before = layer(logits, probe).numpy()
    np.savez(entries[0], pre_logits=features[::-1], labels=labels)
    doctored, _ = fit_open_set(model, tmp_path / "ds", image_size=size, num_classes=3,
                               cache_dir=cache)
    assert not np.allclose(doctored(logits, probe).numpy(), before)
    entries[0].write_bytes(b"")  # unreadable: recomputed and rewritten
    fit_open_set(model, tmp_path / "ds", image_size=size, num_classes=3, cache_dir=cache)
    with np.load(entries[0]) as cached:
        np.testing.assert_array_equal(cached["pre_logits"], features)
    head = model.get_layer("Logits.Logits")
    head.set_weights([w * 2 for w in head.get_weights()])
    fit_open_set(model, tmp_path / "ds", image_size=size, num_classes=3, cache_dir=cache)
    assert sorted(cache.glob("*.npz")) == entries  # same backbone, same entry
    conv = model.get_layer("Conv2d_1a_3x3")
    conv.set_weights([w * 1.5 for w in conv.get_weights()])
    fit_open_set(model, tmp_path / "ds", image_size=size, num_classes=3, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2  # a changed backbone is refitted

    layer, _ = fit_open_set(model, tmp_path / "ds", image_size=size, num_classes=3)
    result = export_model(model, names, tmp_path / "m", image_size=size, ood=layer)
    assert read_manifest(result.path)["ood"]["score_name"] == DEFAULT_SCORE
    images = [p.read_bytes() for p in sorted((tmp_path / "src").rglob("*.jp*g"))][:6]
    from incept.preprocessing import decode_and_preprocess_batch_for_eval

    out = model(decode_and_preprocess_batch_for_eval(tf.constant(images), size), training=False)
    want = layer(out["logits"], out["pre_logits"]).numpy()
    got = tf.saved_model.load(str(result.path)).signatures["serving_default"](
        images=tf.constant(images))
    np.testing.assert_allclose(got["ood_score"].numpy(), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got["is_unknown"].numpy(),
                                  want > read_manifest(result.path)["ood"]["threshold"])
