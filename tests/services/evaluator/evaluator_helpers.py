"""Shared helpers for the evaluator tests: a small converted dataset, runs with
real checkpoints written through incept.checkpoints, evaluator worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from incept.layout import Layout, RunLayout

IMAGE_SIZE = 32
ROOT = Path(__file__).resolve().parents[3]


def make_dataset(layout: Layout, tmp_path: Path, name: str = "flowers", num_classes: int = 3,
                 per_class: int = 12) -> Path:
    from incept.data.convert import convert
    from incept.data.synthetic import write_class_folders

    src = tmp_path / f"src-{name}"
    write_class_folders(src, num_classes=num_classes, per_class=per_class, size=(40, 32))
    out = layout.dataset(name)
    convert(src, out, validation_percent=25, seed=0)
    return out


class RunWriter:
    """A job's run folder with a tiny net trained a few steps between checkpoints."""

    def __init__(self, layout: Layout, job_id: str, dataset: str = "flowers", **spec_fields):
        from incept.checkpoints import build_model, class_names_path, make_checkpoint, make_manager
        from incept.data.dataset import DatasetInfo
        from incept.spec import parse_spec

        self.layout = layout
        self.run: RunLayout = layout.run(job_id)
        self.run.root.mkdir(parents=True, exist_ok=True)
        self.spec = parse_spec({"dataset": dataset, "model_name": "tiny", "image_size": IMAGE_SIZE,
                                "max_steps": 1000, "learning_rate": 0.01, **spec_fields})
        self.run.spec.write_text(self.spec.model_dump_json())
        info = DatasetInfo.load(self.spec.dataset_dir(layout))
        self.class_names = list(info.class_names)
        class_names_path(self.run).write_text(json.dumps(self.class_names))
        tf.keras.utils.set_random_seed(self.spec.seed)
        self.model = build_model(self.spec, len(self.class_names))
        self.optimizer = tf.keras.optimizers.Adam(self.spec.learning_rate)
        self.step = tf.Variable(0, dtype=tf.int64)
        self.manager = make_manager(make_checkpoint(self.model, optimizer=self.optimizer,
                                                    step=self.step),
                                    self.run.checkpoints, keep=10)
        self._data = None

    def train(self, steps: int) -> None:
        from incept.data.dataset import make_dataset as batches

        if self._data is None:
            self._data = iter(batches(self.spec.dataset_dir(self.layout), "train", IMAGE_SIZE,
                                      batch_size=8, training=True, seed=0))
        for _ in range(steps):
            images, labels = next(self._data)
            with tf.GradientTape() as tape:
                logits = self.model(images, training=True)["logits"]
                loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True))
            grads = tape.gradient(loss, self.model.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
            self.step.assign_add(1)

    def save(self, step: int | None = None) -> int:
        step = int(self.step.numpy()) if step is None else int(step)
        self.manager.save(checkpoint_number=step)
        return step


def validation_images(dataset_dir: Path) -> tuple[list[bytes], np.ndarray]:
    from incept.data.dataset import read_examples

    images, labels = [], []
    for ex in read_examples(dataset_dir, "validation"):
        images.append(ex["image"].numpy())
        labels.append(int(ex["label"].numpy()))
    return images, np.array(labels)


def worker_env(layout: Layout, redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"INCEPT_DATA_ROOT": str(layout.root), "INCEPT_REDIS_URL": redis_url,
                "INCEPT_RECONCILE_INTERVAL_S": "1", "INCEPT_EVAL_LOCK_TTL_S": "2",
                "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def start_evaluator(layout: Layout, redis_url: str, log_path: Path, name: str,
                    *args: str, **extra: str) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115  (the child owns it)
    return subprocess.Popen([sys.executable, "-m", "incept.cli", "evaluator", "--name", name, *args],
                            cwd=ROOT, env=worker_env(layout, redis_url, **extra), stdout=log,
                            stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout_s: float = 120.0, what: str = "condition", poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
