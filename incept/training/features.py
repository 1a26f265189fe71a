"""The frozen-backbone feature cache of the head-only path.

When only the heads train, the backbone is a fixed function of the image:
its outputs ``pre_logits`` and ``aux_pre_logits`` (inference mode) are
computed once per image and per view and stored as float16 under
``<data root>/cache/features/<backbone key>/<images key>-view<k>.npz``:

- backbone key: model name, image size, preprocessing, the base checkpoint's
  identity (path, size and mtime of its index; or the init seed when training
  from scratch) -- everything that changes the function;
- images key: the SHA-256 of the ordered per-image fingerprints (SHA-256 of
  the encoded bytes), so any dataset with the same images reuses the entry.

View 0 is the evaluation view (central crop); views 1..V are slim's training
augmentations with fixed stateless seeds (seed, image index, view). Files are
written beside their target and renamed, so concurrent jobs never see a
partial entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from incept.data.dataset import read_examples
from incept.fsutil import fsync_dir
from incept.preprocessing import decode_image, preprocess_for_eval, preprocess_for_train

log = logging.getLogger(__name__)

PREPROCESSING_VERSION = "slim-inception-v1"
FEATURE_BATCH = 32


@dataclass
class SplitFeatures:
    labels: np.ndarray  # int32 [N]
    pre_logits: np.ndarray  # float16 [V, N, D]
    aux_pre_logits: np.ndarray | None  # float16 [V, N, Da]
    hits: int = 0
    computed: int = 0
    compute_seconds: float = 0.0


def backbone_key(model_name: str, image_size: int, checkpoint: Path | None, seed: int) -> str:
    ident: dict = {"model": model_name, "size": image_size, "pre": PREPROCESSING_VERSION}
    if checkpoint is not None:
        index = Path(f"{checkpoint}.index")
        st = index.stat() if index.exists() else None
        ident["checkpoint"] = [str(checkpoint), st.st_size if st else 0, st.st_mtime_ns if st else 0]
    else:
        ident["init_seed"] = seed
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _fingerprints(dataset_dir, split: str) -> tuple[list[str], np.ndarray]:
    fps, labels = [], []
    for ex in read_examples(dataset_dir, split).map(lambda e: (e["image"], e["label"])).as_numpy_iterator():
        fps.append(hashlib.sha256(ex[0]).hexdigest())
        labels.append(ex[1])
    return fps, np.asarray(labels, np.int32)


def _backbone_fn(model):
    names = ["pre_logits"] + (["aux_pre_logits"] if "aux_pre_logits" in model.output else [])

    @tf.function(reduce_retracing=True)
    def run(images):
        # Inference mode: frozen batch norm uses its moving statistics, no dropout.
        out = model(images, training=False)
        return {k: tf.cast(out[k], tf.float16) for k in names}

    return run


def pass_batch_size(count: int) -> int:
    """Batches of at most FEATURE_BATCH, as even as possible: the pass traces one
    shape and pads its last batch to it, so it computes fewer than
    ceil(count / FEATURE_BATCH) padding rows instead of up to FEATURE_BATCH - 1
    (75 images: 3 batches of 25, not 96 rows)."""
    batches = max(1, -(-count // FEATURE_BATCH))
    return max(1, -(-count // batches))


def _compute(model, dataset_dir, split: str, image_size: int, view: int, seed: int,
             count: int) -> dict:
    def prep(index, ex):
        image = decode_image(ex["image"])
        if view == 0:
            return preprocess_for_eval(image, image_size, image_size)
        return preprocess_for_train(image, image_size, image_size,
                                    seed=tf.stack([tf.constant(seed * 1000 + view, tf.int64), index]))

    ds = read_examples(dataset_dir, split).enumerate().map(
        prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batch = pass_batch_size(count)
    # Two batches ahead is plenty: the backbone, not decoding, is the bottleneck.
    # An autotuned buffer of decoded batches (~1 MB per image at 299 px) grows
    # with the length of the pass, and with it the trainer's peak memory.
    ds = ds.batch(batch).prefetch(2)
    run = _backbone_fn(model)
    # Filled in place: one copy of the features, not a list of batches plus
    # their concatenation.
    out: dict[str, np.ndarray] = {}
    done = 0
    for images in ds:
        real = int(images.shape[0])
        if real < batch:
            # Pad the last batch: one traced shape for the whole pass.
            images = tf.pad(images, [[0, batch - real], [0, 0], [0, 0], [0, 0]])
        for n, value in run(images).items():
            if n not in out:
                out[n] = np.empty((count, *value.shape[1:]), np.float16)
            out[n][done:done + real] = value.numpy()[:real]
        done += real
    if done != count:
        raise ValueError(f"{dataset_dir} {split}: read {done} images, its info says {count}")
    return out


def _save_atomic(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> dict | None:
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        log.warning("feature cache entry %s unreadable (%s); recomputing", path, e)
        return None


def split_features(model, cache_root: Path, key: str, dataset_dir, split: str, image_size: int,
                   views: int, seed: int) -> SplitFeatures:
    """Features of every image of ``split`` for views 0..``views`` (0 only if views == 0),
    from the cache where present, computed and stored otherwise."""
    fps, labels = _fingerprints(dataset_dir, split)
    images_key = hashlib.sha256("\n".join(fps).encode()).hexdigest()[:24]
    wanted = [0] if views == 0 else list(range(1, views + 1))
    result = SplitFeatures(labels=labels, pre_logits=None, aux_pre_logits=None)
    pre, aux = [], []
    for view in wanted:
        path = cache_root / key / f"{images_key}-view{view}.npz"
        arrays = _load(path) if path.exists() else None
        if arrays is not None and len(arrays["pre_logits"]) == len(fps):
            result.hits += 1
        else:
            t0 = time.perf_counter()
            arrays = _compute(model, dataset_dir, split, image_size, view, seed, len(fps))
            result.compute_seconds += time.perf_counter() - t0
            result.computed += 1
            _save_atomic(path, arrays)
        pre.append(arrays["pre_logits"])
        if "aux_pre_logits" in arrays:
            aux.append(arrays["aux_pre_logits"])
    # One view (the default): a view axis on its array, not a stacked copy.
    stack = np.stack if len(wanted) > 1 else (lambda arrays: arrays[0][None])
    result.pre_logits = stack(pre)
    result.aux_pre_logits = stack(aux) if aux else None
    return result


def feature_batches(feats: SplitFeatures, batch_size: int, *, seed: int, shuffle_buffer: int) -> tf.data.Dataset:
    """Endless batches ({pre_logits, aux_pre_logits}, labels) in the same example
    order as the full path's pipeline; a random cached view per example."""
    num_views, n = feats.pre_logits.shape[:2]
    pre = tf.constant(feats.pre_logits)
    aux = tf.constant(feats.aux_pre_logits) if feats.aux_pre_logits is not None else None
    ds = tf.data.Dataset.from_tensor_slices((tf.range(n), feats.labels))
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat().enumerate()

    def pick(position, item):
        index, label = item
        view = 0 if num_views == 1 else tf.random.stateless_uniform(
            [], tf.stack([tf.constant(seed, tf.int64), position]), maxval=num_views, dtype=tf.int32)
        x = {"pre_logits": pre[view, index]}
        if aux is not None:
            x["aux_pre_logits"] = aux[view, index]
        return x, label

    ds = ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
