"""Evaluation reads every validation image exactly once, in order, keeping the
last partial batch (slim's batched eval repeats some)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from incept import nets
from incept.data.convert import convert
from incept.data.dataset import DatasetInfo, read_examples
from incept.data.synthetic import write_class_folders
from incept.evaluation.metrics import run_split
from incept.preprocessing import decode_and_preprocess_for_eval


@pytest.mark.parametrize("batch_size", [4, 32])
def test_every_image_once_in_order(tmp_path, batch_size):
    write_class_folders(tmp_path / "src", num_classes=3, per_class=9, size=(40, 32))
    convert(tmp_path / "src", tmp_path / "ds", validation_percent=34, seed=0)
    info = DatasetInfo.load(tmp_path / "ds")
    count = info.count("validation")
    assert count % 4  # the last batch of 4 is partial
    model = nets.build("tiny", num_classes=3, image_size=32)
    out = run_split(model, tmp_path / "ds", "validation", image_size=32, batch_size=batch_size)

    examples = list(read_examples(tmp_path / "ds", "validation"))
    assert len(out) == count == len(examples)
    assert out.filenames == [e["filename"].numpy().decode() for e in examples]
    assert len(set(out.filenames)) == count
    np.testing.assert_array_equal(out.labels, [int(e["label"]) for e in examples])
    pixels = tf.stack([decode_and_preprocess_for_eval(e["image"], 32) for e in examples])
    np.testing.assert_allclose(out.logits, model(pixels, training=False)["logits"].numpy(),
                               atol=1e-5)
