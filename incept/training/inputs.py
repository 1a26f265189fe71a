"""Input pipelines of the full path: ``tf.data`` streaming over the TFRecords
(parallel decode, augmentation, prefetch; only a bounded shuffle buffer in
memory). The example order is shared with the head-only path (same seeded
shuffle over the same file-ordered examples), which is what lets the two
paths produce the same model on the same data."""

from __future__ import annotations

import tensorflow as tf

from incept.data.dataset import DatasetInfo, make_dataset, read_examples
from incept.preprocessing import decode_image, preprocess_for_eval

SHUFFLE_BUFFER = 1024


def shuffle_buffer(num_examples: int) -> int:
    return max(1, min(SHUFFLE_BUFFER, num_examples))


def train_images(dataset_dir, info: DatasetInfo, image_size: int, batch_size: int, *,
                 augment: bool, seed: int) -> tf.data.Dataset:
    """Endless batches of (images float32 [B, s, s, 3] in [-1, 1], labels int32 [B])."""
    if augment:
        return make_dataset(dataset_dir, "train", image_size, batch_size, training=True,
                            seed=seed, shuffle_buffer=SHUFFLE_BUFFER)
    ds = read_examples(dataset_dir, "train").map(lambda ex: (ex["image"], ex["label"]))
    ds = ds.shuffle(shuffle_buffer(info.count("train")), seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat().map(
        lambda encoded, label: (preprocess_for_eval(decode_image(encoded), image_size, image_size),
                                label),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def shard_options() -> tf.data.Options:
    options = tf.data.Options()
    # Examples are split across workers (files may be fewer than workers).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options
