"""TF-slim's Inception preprocessing, in stock TensorFlow ops, shared by
training, evaluation and the exported model (so all three see the same pixels).

* eval: central crop of 87.5 %, bilinear resize to the model size, scale to [-1, 1].
* train: a sampled distorted bounding box, bilinear resize, random left-right
  flip, optional colour distortion (slim's fast mode), scale to [-1, 1].

Random choices in training use stateless ops driven by an explicit seed, so a
training input pipeline is reproducible for a given seed.
"""

from __future__ import annotations

import tensorflow as tf

CENTRAL_FRACTION = 0.875


def _size(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _to_unit_float(image: tf.Tensor) -> tf.Tensor:
    """Any image dtype -> float32 in [0, 1] (floats are taken to be in [0, 1] already)."""
    if image.dtype != tf.float32:
        image = tf.image.convert_image_dtype(image, tf.float32)
    return image


def _to_symmetric(image: tf.Tensor) -> tf.Tensor:
    return (image - 0.5) * 2.0


def preprocess_for_eval(image: tf.Tensor, height: int, width: int,
                        central_fraction: float | None = CENTRAL_FRACTION) -> tf.Tensor:
    """A ``(H, W, 3)`` image (uint8, or float in [0, 1]) -> float32 ``(height, width, 3)`` in [-1, 1].

    A uint8 image is cropped and resized as it is (the resize's output is float),
    then scaled: the same pixels up to float rounding, but a 40 MP photo never
    exists as a full-size float32 copy (12 bytes a pixel instead of 3)."""
    if central_fraction:
        image = tf.image.central_crop(image, central_fraction=central_fraction)
    if image.dtype == tf.uint8:
        image = tf.image.resize(image, [height, width], method=tf.image.ResizeMethod.BILINEAR)
        image = image * (1.0 / 255.0)
    else:
        image = tf.image.resize(_to_unit_float(image), [height, width],
                                method=tf.image.ResizeMethod.BILINEAR)
    image = tf.clip_by_value(image, 0.0, 1.0)
    image.set_shape([height, width, 3])
    return _to_symmetric(image)


def distort_color(image: tf.Tensor, seed: tf.Tensor, fast_mode: bool = True) -> tf.Tensor:
    """Slim's colour distortion (its first ordering): brightness and saturation,
    plus hue and contrast when not in fast mode. ``image`` is float in [0, 1]."""
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    image = tf.image.stateless_random_brightness(image, max_delta=32.0 / 255.0, seed=seeds[0])
    image = tf.image.stateless_random_saturation(image, lower=0.5, upper=1.5, seed=seeds[1])
    if not fast_mode:
        image = tf.image.stateless_random_hue(image, max_delta=0.2, seed=seeds[2])
        image = tf.image.stateless_random_contrast(image, lower=0.5, upper=1.5, seed=seeds[3])
    return tf.clip_by_value(image, 0.0, 1.0)


def distorted_bounding_box_crop(image: tf.Tensor, bbox: tf.Tensor, seed: tf.Tensor,
                                min_object_covered: float = 0.1,
                                aspect_ratio_range: tuple[float, float] = (0.75, 1.33),
                                area_range: tuple[float, float] = (0.05, 1.0),
                                max_attempts: int = 100) -> tf.Tensor:
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=bbox, seed=seed,
        min_object_covered=min_object_covered, aspect_ratio_range=aspect_ratio_range,
        area_range=area_range, max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
    return tf.slice(image, begin, size)


def preprocess_for_train(image: tf.Tensor, height: int, width: int, bbox: tf.Tensor | None = None,
                         *, seed: tf.Tensor | None = None, fast_mode: bool = True,
                         color_distortion: bool = True) -> tf.Tensor:
    """A ``(H, W, 3)`` image -> a randomly cropped, flipped (and colour-distorted)
    float32 ``(height, width, 3)`` in [-1, 1]. ``seed`` is an int32/int64 pair;
    without it one is drawn from the global generator."""
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    if bbox is None:
        bbox = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])
    image = _to_unit_float(image)
    image = distorted_bounding_box_crop(image, bbox, seeds[0])
    image = tf.image.resize(image, [height, width], method=tf.image.ResizeMethod.BILINEAR)
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    if color_distortion:
        image = distort_color(image, seeds[2], fast_mode=fast_mode)
    image.set_shape([height, width, 3])
    return _to_symmetric(image)


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG (also GIF/BMP) bytes -> uint8 ``(H, W, 3)``: grey is
    expanded, alpha dropped, 16-bit PNG scaled to 8 bits."""
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_and_preprocess_for_eval(encoded: tf.Tensor, size) -> tf.Tensor:
    """One encoded image (scalar tf.string) -> float32 ``(h, w, 3)`` in [-1, 1].
    Only stock ops, so it can live inside a SavedModel signature."""
    height, width = _size(size)
    return preprocess_for_eval(decode_image(encoded), height, width)


def decode_and_preprocess_batch_for_eval(encoded: tf.Tensor, size) -> tf.Tensor:
    """A ``[N]`` tf.string batch of encoded images -> float32 ``[N, h, w, 3]``."""
    height, width = _size(size)
    return tf.map_fn(lambda e: decode_and_preprocess_for_eval(e, (height, width)), encoded,
                     fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
