"""Metrics over a validation split, every image counted exactly once.

slim's ``eval_image_classifier`` runs ``ceil(N / batch)`` full batches from a
repeating input and so counts some images twice; here the split is read once,
in order, and the last partial batch is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

ECE_BINS = 15
TOP_K = 5


@dataclass
class SplitOutputs:
    """The model's outputs for every image of a split, in the split's order."""

    logits: np.ndarray  # [N, C]
    pre_logits: np.ndarray  # [N, D]
    labels: np.ndarray  # [N]
    filenames: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def eval_dataset(dataset_dir: Path, split: str, image_size: int, batch_size: int) -> tf.data.Dataset:
    """The split once, in order, eval-preprocessed, batched with the last partial batch kept."""
    from incept.data.dataset import read_examples
    from incept.preprocessing import decode_and_preprocess_for_eval

    def prepare(example):
        return (decode_and_preprocess_for_eval(example["image"], image_size),
                tf.cast(example["label"], tf.int64), example["filename"])

    ds = read_examples(dataset_dir, split)
    # map with deterministic=True keeps the order; nothing repeats, nothing is dropped.
    return (ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=False)
            .prefetch(tf.data.AUTOTUNE))


def forward_fn(model: keras.Model, image_size: int):
    """The model's inference pass as one traced function for any batch size."""
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)

    @tf.function(input_signature=[spec])
    def forward(pixels):
        out = model(pixels, training=False)
        return out["logits"], out["pre_logits"]

    return forward


def run_split(model: keras.Model, dataset_dir: Path, split: str, *, image_size: int,
              batch_size: int = 32, forward=None) -> SplitOutputs:
    forward = forward or forward_fn(model, image_size)
    logits, pre_logits, labels = [], [], []
    filenames: list[str] = []
    for pixels, label, filename in eval_dataset(dataset_dir, split, image_size, batch_size):
        lg, pl = forward(pixels)
        logits.append(lg.numpy().astype(np.float32))
        pre_logits.append(pl.numpy().astype(np.float32))
        labels.append(label.numpy())
        filenames.extend(f.decode() for f in filename.numpy())
    if not labels:
        raise ValueError(f"the {split!r} split of {dataset_dir} has no images")
    return SplitOutputs(np.concatenate(logits), np.concatenate(pre_logits),
                        np.concatenate(labels), filenames)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """Weighted gap between confidence and accuracy over equal-width confidence bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; confidence 0 cannot happen with softmax.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(ece)


def classification_metrics(logits: np.ndarray, labels: np.ndarray,
                           class_names: Sequence[str]) -> dict:
    """accuracy, recall_at_5 (top-k, k = min(5, C)), mean loss, per-class P/R/F1,
    the confusion matrix (rows: true class, columns: predicted), ECE, count."""
    num_classes = len(class_names)
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    n = int(labels.shape[0])
    if n == 0:
        raise ValueError("no images to evaluate")
    if logits.shape != (n, num_classes):
        raise ValueError(f"logits have shape {logits.shape}, expected ({n}, {num_classes})")
    probabilities = softmax(logits)
    predicted = probabilities.argmax(axis=1)
    k = min(TOP_K, num_classes)
    top_k = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    log_probs = np.log(np.clip(probabilities[np.arange(n), labels], 1e-30, None))

    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for c, name in enumerate(class_names):
        tp = int(confusion[c, c])
        predicted_c = int(confusion[:, c].sum())
        support = int(confusion[c].sum())
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return {
        "accuracy": float((predicted == labels).mean()),
        "recall_at_5": float((top_k == labels[:, None]).any(axis=1).mean()),
        "top_k": k,
        "loss": float(-log_probs.mean()),
        "num_images": n,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "ece": expected_calibration_error(probabilities, labels),
    }


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
