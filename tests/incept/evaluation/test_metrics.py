"""Classification metrics against hand-worked examples and Keras' own metrics."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from incept.evaluation.metrics import classification_metrics, expected_calibration_error


def test_hand_worked_example():
    names = ["a", "b", "c"]
    # Predictions: a, b, b, c  -- labels: a, b, c, c
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]))
    labels = np.array([0, 1, 2, 2])
    m = classification_metrics(logits, labels, names)
    assert m["num_images"] == 4
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["top_k"] == 3 and m["recall_at_5"] == 1.0  # k = min(5, C)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["per_class"]["c"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.3, 0.8])))


def test_agrees_with_keras_metrics():
    rng = np.random.default_rng(0)
    n, c = 203, 8
    logits = (rng.normal(size=(n, c)) * 3).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    m = classification_metrics(logits, labels, [str(i) for i in range(c)])
    top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5)
    top5.update_state(labels, logits)
    acc = keras.metrics.SparseCategoricalAccuracy()
    acc.update_state(labels, logits)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    assert m["recall_at_5"] == pytest.approx(float(top5.result()), abs=1e-6)
    assert m["accuracy"] == pytest.approx(float(acc.result()), abs=1e-6)
    assert m["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert sum(row[i] for i, row in enumerate(m["confusion_matrix"])) == round(m["accuracy"] * n)
    assert sum(v["support"] for v in m["per_class"].values()) == n


def test_ece():
    # Two bins in use: confidence 0.9 all right, confidence 0.6 half right.
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 4)
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    perfect = np.array([[1.0, 0.0]] * 3)
    assert expected_calibration_error(perfect, np.zeros(3, int)) == pytest.approx(0.0)


def test_rejects_empty_and_mismatched():
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((0, 3)), np.zeros(0, int), ["a", "b", "c"])
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((2, 2)), np.zeros(2, int), ["a", "b", "c"])
