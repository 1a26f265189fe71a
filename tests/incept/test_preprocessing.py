"""slim's Inception preprocessing: ranges, the central crop, train randomness,
and the same eval tensor from tf.data and from a bytes-taking tf.function."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from incept.data.convert import convert
from incept.data.dataset import read_examples
from incept.data.synthetic import write_class_folders
from incept.preprocessing import (
    decode_and_preprocess_batch_for_eval,
    decode_and_preprocess_for_eval,
    preprocess_for_eval,
    preprocess_for_train,
)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_eval_keeps_the_central_87_5_percent_and_scales_to_symmetric_range():
    # 64x64 red frame 4 px wide (= 6.25 % a side, outside the 87.5 % centre) around blue.
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[...] = (255, 0, 0)
    arr[4:60, 4:60] = (0, 0, 255)
    out = preprocess_for_eval(tf.constant(arr), 32, 48).numpy()
    assert out.shape == (32, 48, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 2], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[..., 0], -1.0, atol=1e-6)
    # Without the crop the red frame shows up at the border.
    uncropped = preprocess_for_eval(tf.constant(arr), 32, 32, central_fraction=None).numpy()
    assert uncropped[0, 0, 0] > 0.5


def test_eval_accepts_uint8_and_unit_float_alike():
    arr = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    a = preprocess_for_eval(tf.constant(arr), 16, 16)
    b = preprocess_for_eval(tf.constant(arr.astype(np.float32) / 255.0), 16, 16)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    assert a.numpy().min() >= -1.0 and a.numpy().max() <= 1.0


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"),
                                      ("L", "JPEG"), ("RGB", "JPEG"), ("P", "PNG")])
def test_decode_and_preprocess_handles_jpeg_png_grey_and_alpha(mode, fmt):
    color = {"L": 200, "LA": (200, 90), "RGBA": (200, 200, 200, 10), "RGB": (200, 200, 200),
             "P": 3}[mode]
    encoded = _encode(Image.new(mode, (50, 40), color), fmt)
    out = decode_and_preprocess_for_eval(tf.constant(encoded), 24).numpy()
    assert out.shape == (24, 24, 3)
    if mode != "P":
        np.testing.assert_allclose(out, (200 / 255 - 0.5) * 2, atol=0.03)


def test_eval_is_the_same_from_tf_data_and_from_a_bytes_signature(tmp_path):
    write_class_folders(tmp_path / "src", num_classes=2, per_class=4, size=(64, 48))
    Image.new("LA", (30, 50), (90, 255)).save(tmp_path / "src" / "daisy" / "grey.png")
    convert(tmp_path / "src", tmp_path / "ds", validation_percent=0)

    pipeline = read_examples(tmp_path / "ds", "train").map(
        lambda ex: (ex["image"], decode_and_preprocess_for_eval(ex["image"], 32)))

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def serve(encoded):
        return decode_and_preprocess_for_eval(encoded, 32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve_batch(encoded):
        return decode_and_preprocess_batch_for_eval(encoded, 32)

    n = 0
    encoded_all, from_data_all = [], []
    for encoded, from_data in pipeline:
        np.testing.assert_array_equal(from_data.numpy(), serve(encoded).numpy())
        encoded_all.append(encoded)
        from_data_all.append(from_data)
        n += 1
    assert n == 9
    np.testing.assert_array_equal(serve_batch(tf.stack(encoded_all)).numpy(),
                                  tf.stack(from_data_all).numpy())


def test_train_is_random_in_range_and_reproducible_per_seed():
    arr = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    image = tf.constant(arr)
    outs = [preprocess_for_train(image, 32, 32, seed=tf.constant([7, i])).numpy()
            for i in range(6)]
    for out in outs:
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        assert out.min() >= -1.0 and out.max() <= 1.0
    again = preprocess_for_train(image, 32, 32, seed=tf.constant([7, 0])).numpy()
    np.testing.assert_array_equal(outs[0], again)
    assert len({o.tobytes() for o in outs}) == 6
    unseeded = preprocess_for_train(image, 32, 32, color_distortion=False)
    assert unseeded.shape == (32, 32, 3)


def test_train_flips_and_crops():
    # Left half black, right half white: a flip swaps which side is bright.
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, 32:] = 255
    sides = set()
    for i in range(20):
        out = preprocess_for_train(tf.constant(arr), 16, 16, seed=tf.constant([0, i]),
                                   color_distortion=False).numpy()
        left, right = out[:, :4].mean(), out[:, -4:].mean()
        if abs(left - right) > 1.0:
            sides.add(left > right)
    assert sides == {True, False}


def test_decode_and_preprocess_works_inside_a_saved_model(tmp_path):
    class Preprocessor(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(self, images):
            return {"pixels": decode_and_preprocess_batch_for_eval(images, (24, 32))}

    module = Preprocessor()
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": module.serve})
    loaded = tf.saved_model.load(str(tmp_path / "m")).signatures["serving_default"]

    gray16 = Image.fromarray(np.full((30, 30), 32896, dtype=np.uint16))
    images = [_encode(Image.new("RGB", (40, 30), (255, 0, 0)), "JPEG"),
              _encode(gray16, "PNG"),
              _encode(Image.new("RGBA", (10, 50), (0, 0, 255, 0)), "PNG")]
    out = loaded(images=tf.constant(images))["pixels"].numpy()
    assert out.shape == (3, 24, 32, 3)
    np.testing.assert_allclose(out[0, ..., 0], 1.0, atol=0.02)
    np.testing.assert_allclose(out[1], (128 / 255 - 0.5) * 2, atol=0.01)   # 16-bit scaled
    np.testing.assert_allclose(out[2, ..., 2], 1.0, atol=1e-6)              # alpha dropped
    expected = np.stack([decode_and_preprocess_for_eval(tf.constant(e), (24, 32)).numpy()
                         for e in images])
    np.testing.assert_array_equal(out, expected)


def test_a_huge_photo_is_never_a_full_size_float_image():
    """The serving signature's decode of four 40 MP JPEGs (issue 14 item 1): the
    uint8 image is cropped and resized as it is, so the peak stays near the
    decoded bytes (3 per pixel), not 12 per pixel of float32 (measured: +926 MB
    before, +226 MB after, in a fresh process)."""
    import subprocess
    import sys

    code = """
import io, resource, tensorflow as tf
from PIL import Image
from incept.preprocessing import decode_and_preprocess_batch_for_eval
buf = io.BytesIO(); Image.new("RGB", (6300, 6300), (128, 100, 90)).save(buf, "JPEG")
run = tf.function(lambda x: decode_and_preprocess_batch_for_eval(x, 299))
run(tf.constant([buf.getvalue()]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = run(tf.constant([buf.getvalue()] * 4))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, out.shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=True).stdout.split()
    assert float(out[0]) < 500, out


def test_the_uint8_path_gives_the_float_path_s_pixels():
    image = np.random.default_rng(0).integers(0, 256, (301, 457, 3), dtype=np.uint8)
    from_uint8 = preprocess_for_eval(tf.constant(image), 64, 80).numpy()
    from_float = preprocess_for_eval(tf.constant(image.astype(np.float32) / 255.0), 64, 80).numpy()
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-5)
