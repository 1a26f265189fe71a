"""Reading a converted dataset (see incept.data.convert): its description,
its examples in file order, and the training / evaluation input pipelines.
Everything streams from the TFRecord shards; nothing loads a whole dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from incept.data.convert import DATASET_JSON, SPLITS
from incept.errors import UserError

FEATURES = {
    "image/encoded": ("string", ""),
    "image/format": ("string", "jpeg"),
    "image/class/label": ("int64", -1),
    "image/height": ("int64", 0),
    "image/width": ("int64", 0),
    "image/filename": ("string", ""),
}


@dataclass(frozen=True)
class DatasetInfo:
    path: Path
    class_names: list[str]
    counts: dict[str, int]
    per_class: dict[str, dict[str, int]]
    fingerprint: str
    seed: int
    validation_percent: float
    shards: dict[str, list[str]] = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def count(self, split: str) -> int:
        _check_split(split)
        return int(self.counts.get(split, 0))

    def files(self, split: str) -> list[Path]:
        _check_split(split)
        return [self.path / name for name in self.shards.get(split, [])]

    @classmethod
    def load(cls, dataset_dir: str | Path) -> DatasetInfo:
        path = Path(dataset_dir)
        try:
            raw = json.loads((path / DATASET_JSON).read_text())
        except FileNotFoundError:
            raise UserError(f"{path} is not a converted dataset (no {DATASET_JSON}); "
                            "run 'incept convert SRC_DIR --out DIR' first") from None
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path / DATASET_JSON}: {e}") from None
        try:
            info = cls(path=path, class_names=list(raw["class_names"]),
                       counts={k: int(v) for k, v in raw["counts"].items()},
                       per_class=raw.get("per_class", {}), fingerprint=raw["fingerprint"],
                       seed=int(raw.get("seed", 0)),
                       validation_percent=float(raw.get("validation_percent", 0)),
                       shards={k: list(v) for k, v in raw.get("shards", {}).items()}, raw=raw)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path / DATASET_JSON} is malformed: {e}") from None
        missing = [str(f) for s in SPLITS for f in info.files(s) if not f.exists()]
        if missing:
            raise UserError(f"dataset {path} is incomplete: missing {', '.join(missing[:3])}")
        return info


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _feature_spec():
    import tensorflow as tf

    return {k: tf.io.FixedLenFeature([], getattr(tf, t), default_value=d)
            for k, (t, d) in FEATURES.items()}


def parse_example(serialized):
    """A serialized tf.train.Example -> {image, label, filename, height, width, format}."""
    import tensorflow as tf

    f = tf.io.parse_single_example(serialized, _feature_spec())
    return {"image": f["image/encoded"], "label": tf.cast(f["image/class/label"], tf.int32),
            "filename": f["image/filename"], "height": tf.cast(f["image/height"], tf.int32),
            "width": tf.cast(f["image/width"], tf.int32), "format": f["image/format"]}


def read_examples(dataset_dir: str | Path, split: str):
    """tf.data of dicts {image: encoded bytes, label: int32, filename, height,
    width, format}, shard by shard in file order (deterministic)."""
    import tensorflow as tf

    info = DatasetInfo.load(dataset_dir)
    files = [str(f) for f in info.files(split)]
    return tf.data.TFRecordDataset(files).map(parse_example, num_parallel_calls=tf.data.AUTOTUNE,
                                              deterministic=True)


def make_dataset(dataset_dir: str | Path, split: str, image_size, batch_size: int,
                 training: bool, seed: int = 0, repeat: bool | None = None,
                 shuffle_buffer: int = 1024, drop_remainder: bool | None = None,
                 color_distortion: bool = True, fast_mode: bool = True):
    """Batches of ``(images float32 [B, h, w, 3] in [-1, 1], labels int32 [B])``.

    Training: shards read interleaved in a seeded order, shuffled, decoded and
    augmented in parallel (stateless ops: the same seed gives the same stream),
    repeated forever by default, full batches only. Evaluation: file order, each
    image once, central-crop preprocessing, last partial batch kept."""
    import tensorflow as tf

    from incept.preprocessing import decode_image, preprocess_for_eval, preprocess_for_train

    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    info = DatasetInfo.load(dataset_dir)
    files = [str(f) for f in info.files(split)]
    if info.count(split) == 0:
        raise UserError(f"dataset {info.path} has no {split} images")
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    autotune = tf.data.AUTOTUNE
    if training:
        ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed,
                                                               reshuffle_each_iteration=True)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 4),
                           num_parallel_calls=autotune, deterministic=True)
        ds = ds.shuffle(min(shuffle_buffer, max(1, info.count(split))), seed=seed,
                        reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        # Each example's augmentation seed is (seed, position in the stream).
        ds = ds.enumerate()

        def train_map(index, serialized):
            ex = parse_example(serialized)
            image = preprocess_for_train(
                decode_image(ex["image"]), height, width,
                seed=tf.stack([tf.constant(seed, tf.int64), index]),
                color_distortion=color_distortion, fast_mode=fast_mode)
            return image, ex["label"]

        ds = ds.map(train_map, num_parallel_calls=autotune, deterministic=True)
    else:
        ds = tf.data.TFRecordDataset(files)
        if repeat:
            ds = ds.repeat()

        def eval_map(serialized):
            ex = parse_example(serialized)
            return preprocess_for_eval(decode_image(ex["image"]), height, width), ex["label"]

        ds = ds.map(eval_map, num_parallel_calls=autotune, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(autotune)
