"""The frozen-backbone feature cache of the head-only path.

When only the heads train, the backbone is a fixed function of the image:
its outputs ``pre_logits`` and ``aux_pre_logits`` (inference mode) are
computed once per image and per view and stored as float16 under
``<data root>/cache/features/<backbone key>/<images key>-view<k>/<output>.npy``
(plain ``.npy`` files, read back memory-mapped: the cache's size does not
weigh on the trainer's or evaluator's memory):

- backbone key: model name, image size, preprocessing, the base checkpoint's
  identity (path, size and mtime of its index; or the init seed when training
  from scratch) -- everything that changes the function;
- images key: the SHA-256 of the ordered per-image fingerprints (SHA-256 of
  the encoded bytes), so any dataset with the same images reuses the entry.

View 0 is the evaluation view (central crop); views 1..V are slim's training
augmentations with fixed stateless seeds (seed, image index, view). An entry
is written beside its target and renamed, so concurrent jobs never see a
partial entry. The trainer computes the training split's views and the
validation split's view 0; the evaluator of a head-only job reads both
(``incept.evaluation.cached``), so the backbone runs once per image per job.

A multi-worker job splits the pass: worker i computes images i, i + n, ...
into a part entry, and once every part is there the chief joins them into
the same entry a single worker would have written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from incept.data.dataset import read_examples
from incept.fsutil import atomic_directory
from incept.preprocessing import decode_image, preprocess_for_eval, preprocess_for_train

log = logging.getLogger(__name__)

PREPROCESSING_VERSION = "slim-inception-v1"
FEATURE_BATCH = 32


@dataclass
class SplitFeatures:
    labels: np.ndarray  # int32 [N]
    # Per view: {"pre_logits": float16 [N, D], "aux_pre_logits": float16 [N, Da]
    # when the net has an aux head}, memory-mapped from the cache.
    views: list[dict[str, np.ndarray]]
    filenames: list[str] = field(default_factory=list)  # per row, as SplitIndex
    hits: int = 0
    computed: int = 0
    compute_seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def concatenated(self, name: str = "pre_logits") -> np.ndarray:
        """Every view's rows of ``name``, view after view (one copy in memory)."""
        return np.concatenate([v[name] for v in self.views])


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count`` computes images index, index + count, ..."""

    index: int = 0
    count: int = 1

    def size(self, total: int) -> int:
        return len(range(self.index, total, self.count))

    def part_path(self, entry: Path) -> Path:
        return entry if self.count == 1 else entry.with_name(
            f"{entry.name}.part{self.index}of{self.count}")


def backbone_key(model_name: str, image_size: int, checkpoint: Path | None, seed: int) -> str:
    ident: dict = {"model": model_name, "size": image_size, "pre": PREPROCESSING_VERSION}
    if checkpoint is not None:
        index = Path(f"{checkpoint}.index")
        st = index.stat() if index.exists() else None
        ident["checkpoint"] = [str(checkpoint), st.st_size if st else 0, st.st_mtime_ns if st else 0]
    else:
        ident["init_seed"] = seed
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class SplitIndex:
    """A split's images in the TFRecords' read order, which is the cache's row order."""

    fingerprints: list[str]  # sha256 of each encoded image
    labels: np.ndarray  # int32 [N]
    filenames: list[str]  # relative to the source folder, as the converter recorded them


def read_index(dataset_dir, split: str) -> SplitIndex:
    fps, labels, names = [], [], []
    examples = read_examples(dataset_dir, split).map(lambda e: (e["image"], e["label"], e["filename"]))
    for image, label, name in examples.as_numpy_iterator():
        fps.append(hashlib.sha256(image).hexdigest())
        labels.append(label)
        names.append(name.decode())
    return SplitIndex(fps, np.asarray(labels, np.int32), names)


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


def _eval_or_train_view(image_size: int, view: int, seed: int):
    def prep(index, ex):
        image = decode_image(ex["image"])
        if view == 0:
            return preprocess_for_eval(image, image_size, image_size)
        return preprocess_for_train(image, image_size, image_size,
                                    seed=tf.stack([tf.constant(seed * 1000 + view, tf.int64), index]))

    return prep


def _compute(model, dataset_dir, split: str, image_size: int, view: int, seed: int,
             count: int, *, shard: Shard = Shard(), progress=None) -> dict:
    """Features of this shard's images of ``split`` (image i belongs to shard
    i mod shard.count; the view's random seeds use the global index i)."""
    ds = read_examples(dataset_dir, split).enumerate()
    if shard.count > 1:
        ds = ds.shard(shard.count, shard.index)
    count = shard.size(count)
    ds = ds.map(_eval_or_train_view(image_size, view, seed), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
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
        if progress is not None:
            progress(real)
    if done != count:
        raise ValueError(f"{dataset_dir} {split}: read {done} images, its info says {count}")
    return out


def save_entry(path: Path, arrays: dict) -> None:
    """One entry = a folder of ``<name>.npy`` files, built beside ``path`` and
    renamed into place whole (a concurrent writer of the same entry wrote the
    same values: the first rename wins, the other copy is dropped)."""
    try:
        with atomic_directory(path) as tmp:
            for name, value in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(value))
    except OSError as e:
        if not (path / "pre_logits.npy").exists():
            raise
        log.info("feature cache entry %s was written concurrently (%s)", path.name, e)


def _load(path: Path, count: int) -> dict[str, np.ndarray] | None:
    """The entry's arrays, memory-mapped: pages are read when used and belong to
    the page cache, so a large cache does not have to fit in the process."""
    if not path.is_dir():
        return None
    try:
        arrays = {f.stem: np.load(f, mmap_mode="r") for f in sorted(path.glob("*.npy"))}
    except (OSError, ValueError, EOFError) as e:
        log.warning("feature cache entry %s unreadable (%s); recomputing", path, e)
        return None
    if "pre_logits" not in arrays or any(len(a) != count for a in arrays.values()):
        log.warning("feature cache entry %s is incomplete; recomputing", path)
        return None
    return arrays


def images_key(fingerprints: list[str]) -> str:
    return hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()[:24]


def entry_path(cache_root: Path, key: str, images: str, view: int) -> Path:
    return Path(cache_root) / key / f"{images}-view{view}"


def views_of(spec) -> list[int]:
    """The views a job trains on: 0 (the evaluation view) when it does not
    augment or caches no augmented view, else 1..augmented_views."""
    views = spec.augmented_views if spec.augment else 0
    return [0] if views == 0 else list(range(1, views + 1))


@dataclass
class _Plan:
    """What one split needs: its images, the views already cached, the missing ones."""

    split: str
    fingerprints: list[str]
    feats: SplitFeatures
    views: list[int]
    missing: list[int]

    def entry(self, cache_root: Path, key: str, view: int) -> Path:
        return entry_path(cache_root, key, images_key(self.fingerprints), view)


def _plan(cache_root: Path, key: str, dataset_dir, split: str, views: list[int]) -> _Plan:
    index = read_index(dataset_dir, split)
    fps = index.fingerprints
    plan = _Plan(split, fps, SplitFeatures(labels=index.labels, views=[], filenames=index.filenames),
                 list(views), [])
    for view in views:
        arrays = _load(plan.entry(cache_root, key, view), len(fps))
        if arrays is None:
            plan.missing.append(view)
        plan.feats.views.append(arrays or {})  # a missing view is filled by _complete
    plan.feats.hits = len(views) - len(plan.missing)
    return plan


def _complete(plan: _Plan, model, cache_root: Path, key: str, dataset_dir, image_size: int,
              seed: int, *, progress, shard: Shard, barrier) -> SplitFeatures:
    total = len(plan.fingerprints)
    t0 = time.perf_counter()
    for view in plan.missing:
        arrays = _compute(model, dataset_dir, plan.split, image_size, view, seed, total,
                          shard=shard, progress=progress)
        save_entry(shard.part_path(plan.entry(cache_root, key, view)), arrays)
    if plan.missing and shard.count > 1:
        barrier()  # every worker's part is written
        if shard.index == 0:
            for view in plan.missing:
                _join_parts(plan.entry(cache_root, key, view), shard.count, total)
        barrier()  # the chief has joined them
    for view in plan.missing:
        stored = _load(plan.entry(cache_root, key, view), total)
        if stored is None:
            raise RuntimeError(f"feature cache entry for view {view} was not written")
        plan.feats.views[plan.views.index(view)] = stored
    plan.feats.computed = len(plan.missing)
    plan.feats.compute_seconds = time.perf_counter() - t0 if plan.missing else 0.0
    return plan.feats


class NotCached(LookupError):
    """``cached_features(..., compute=False)`` found a view missing."""


def cached_features(model, cache_root: Path, key: str, dataset_dir, image_size: int, seed: int,
                    wanted: dict[str, list[int]], *, progress=None, shard: Shard = Shard(),
                    barrier=None, compute: bool = True) -> dict[str, SplitFeatures]:
    """Features of every image of each split in ``wanted`` ({split: views}),
    from the cache where present, computed and stored otherwise.

    ``progress``: an object with ``start(total_images)`` (once, before the
    pass) and ``__call__(images)`` (after each batch). With several shards (a
    multi-worker job) each worker computes its shard of every missing view,
    ``barrier()`` waits for all of them, and the chief joins the parts into the
    entry one worker would have written. ``compute=False``: raise ``NotCached``
    instead of computing a missing view (``model`` may then be None)."""
    plans = [_plan(cache_root, key, dataset_dir, split, views) for split, views in wanted.items()]
    if not compute and any(p.missing for p in plans):
        raise NotCached(", ".join(f"{p.split} views {p.missing}" for p in plans if p.missing))
    if progress is not None:
        progress.start(sum(len(p.missing) * shard.size(len(p.fingerprints)) for p in plans))
    return {p.split: _complete(p, model, cache_root, key, dataset_dir, image_size, seed,
                               progress=progress, shard=shard, barrier=barrier) for p in plans}


def split_features(model, cache_root: Path, key: str, dataset_dir, split: str, image_size: int,
                   views: list[int], seed: int, **kwargs) -> SplitFeatures:
    """``cached_features`` of one split."""
    return cached_features(model, cache_root, key, dataset_dir, image_size, seed,
                           {split: views}, **kwargs)[split]


def _join_parts(path: Path, count: int, total: int) -> None:
    """The whole entry from the shards' parts (image i is row i // count of part
    i mod count), then the parts are removed."""
    shard_paths = [Shard(i, count).part_path(path) for i in range(count)]
    loaded = [_load(p, Shard(i, count).size(total)) for i, p in enumerate(shard_paths)]
    parts = [p for p in loaded if p is not None]
    if len(parts) != count:
        raise RuntimeError(f"feature cache {path.name}: a worker's part is missing")
    whole = {}
    for name in parts[0]:
        whole[name] = np.empty((total, *parts[0][name].shape[1:]), np.float16)
        for i, part in enumerate(parts):
            whole[name][i::count] = part[name]
    save_entry(path, whole)
    for p in shard_paths:
        shutil.rmtree(p, ignore_errors=True)


def feature_batches(feats: SplitFeatures, batch_size: int, *, seed: int, shuffle_buffer: int) -> tf.data.Dataset:
    """Endless batches ({pre_logits, aux_pre_logits}, labels) in the same example
    order as the full path's pipeline; a random cached view per example. The
    rows are gathered per batch from the memory-mapped entries."""
    num_views, n = len(feats.views), len(feats)
    names = sorted(feats.views[0])
    ds = tf.data.Dataset.from_tensor_slices((tf.range(n, dtype=tf.int64), feats.labels))
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat().enumerate()

    def pick_view(position, item):
        index, label = item
        view = 0 if num_views == 1 else tf.random.stateless_uniform(
            [], tf.stack([tf.constant(seed, tf.int64), position]), maxval=num_views, dtype=tf.int32)
        return tf.cast(view, tf.int64), index, label

    def gather(views, indices):
        return [np.stack([feats.views[v][name][i] for v, i in zip(views, indices, strict=True)])
                for name in names]

    def read(views, indices, labels):
        rows = tf.numpy_function(gather, [views, indices], [tf.float16] * len(names), stateful=False)
        x = {}
        for name, value in zip(names, rows, strict=True):
            x[name] = tf.ensure_shape(value, [batch_size, feats.views[0][name].shape[1]])
        return x, labels

    ds = ds.map(pick_view).batch(batch_size, drop_remainder=True)
    return ds.map(read, num_parallel_calls=2, deterministic=True).prefetch(2)
