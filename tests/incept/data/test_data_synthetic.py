"""The generated class folders are deterministic, in flower_photos layout, and
easy enough that the tiny net learns them in a few dozen steps."""

from __future__ import annotations

import keras
import numpy as np
from PIL import Image

from incept.data.convert import convert
from incept.data.dataset import make_dataset
from incept.data.synthetic import FLOWER_CLASSES, write_class_folders
from incept.nets import build


def test_layout_names_and_determinism(tmp_path):
    names = write_class_folders(tmp_path / "a", per_class=3, seed=5)
    write_class_folders(tmp_path / "b", per_class=3, seed=5)
    assert names == list(FLOWER_CLASSES)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == names
    for path in (tmp_path / "a").rglob("*.jpg"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
        with Image.open(path) as im:
            assert im.size == (64, 48) and im.mode == "RGB" and im.format == "JPEG"
    more = write_class_folders(tmp_path / "c", num_classes=7, per_class=1, fmt="png",
                               size=(20, 10))
    assert more == sorted([*FLOWER_CLASSES, "class_05", "class_06"])  # label order
    assert len(list((tmp_path / "c").rglob("*.png"))) == 7
    custom = write_class_folders(tmp_path / "d", num_classes=2, per_class=1, class_names=["x", "y"])
    assert custom == ["x", "y"]


def test_tiny_net_learns_the_generated_classes(tmp_path):
    keras.utils.set_random_seed(0)
    write_class_folders(tmp_path / "src", num_classes=5, per_class=20, size=(48, 48), seed=0)
    convert(tmp_path / "src", tmp_path / "ds", validation_percent=20)
    train = make_dataset(tmp_path / "ds", "train", 32, batch_size=16, training=True,
                         color_distortion=False)
    val = make_dataset(tmp_path / "ds", "validation", 32, batch_size=20, training=False)
    net = build("tiny", num_classes=5, image_size=32)
    model = keras.Model(net.input, net.output["logits"])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train, steps_per_epoch=40, epochs=1, verbose=0)
    # Batch statistics, not the moving averages: slim's BatchNorm decay (0.9997)
    # leaves those near their initial values after only 40 steps, and this test is
    # about the data being learnable, not about BatchNorm warm-up.
    logits = np.concatenate([model(x, training=True).numpy() for x, _ in val])
    labels = np.concatenate([y.numpy() for _, y in val])
    assert len(labels) == 20
    assert (logits.argmax(axis=1) == labels).mean() >= 0.9  # chance is 0.2
