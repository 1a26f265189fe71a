"""Reading converted datasets: DatasetInfo, read_examples, make_dataset."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from incept.data.convert import convert
from incept.data.dataset import DatasetInfo, make_dataset, read_examples
from incept.data.synthetic import write_class_folders
from incept.errors import UserError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    write_class_folders(root / "src", num_classes=3, per_class=12, size=(48, 40))
    convert(root / "src", root / "ds", validation_percent=25, shards=2)
    return root / "ds"


def test_info_describes_the_dataset(dataset):
    info = DatasetInfo.load(dataset)
    assert info.class_names == ["daisy", "dandelion", "roses"] and info.num_classes == 3
    assert info.count("train") == 27 and info.count("validation") == 9
    assert info.per_class["validation"] == {"daisy": 3, "dandelion": 3, "roses": 3}
    assert [f.name for f in info.files("train")] == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    with pytest.raises(UserError, match="unknown split"):
        info.count("test")


def test_missing_or_incomplete_dataset_is_a_user_error(tmp_path, dataset):
    with pytest.raises(UserError, match="not a converted dataset"):
        DatasetInfo.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.json").write_text((dataset / "dataset.json").read_text())
    with pytest.raises(UserError, match="incomplete"):
        DatasetInfo.load(broken)
    (broken / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        DatasetInfo.load(broken)


def test_read_examples_is_deterministic(dataset):
    a = [ex["filename"].numpy() for ex in read_examples(dataset, "train")]
    b = [ex["filename"].numpy() for ex in read_examples(dataset, "train")]
    assert a == b and len(a) == 27 and len(set(a)) == 27


def test_eval_pipeline_sees_every_validation_image_once(dataset):
    ds = make_dataset(dataset, "validation", 32, batch_size=4, training=False)
    batches = list(ds)
    assert [int(x.shape[0]) for x, _ in batches] == [4, 4, 1]
    images = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert images.shape == (9, 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    expected = [int(ex["label"]) for ex in read_examples(dataset, "validation")]
    assert labels.tolist() == expected


def test_train_pipeline_repeats_shuffles_and_is_reproducible(dataset):
    def first_batches(seed, n=8):
        ds = make_dataset(dataset, "train", (24, 32), batch_size=8, training=True, seed=seed)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert len(a) == 8  # 64 images from 27: it repeats
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape == (8, 24, 32, 3) and ya.dtype == np.int32
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))
    labels = np.concatenate([y for _, y in a[:4]])
    assert set(labels.tolist()) == {0, 1, 2}


def test_train_pipeline_once_through_drops_the_partial_batch(dataset):
    ds = make_dataset(dataset, "train", 16, batch_size=10, training=True, repeat=False)
    assert [int(x.shape[0]) for x, _ in ds] == [10, 10]
    assert ds.element_spec[0].shape.as_list() == [10, 16, 16, 3]


def test_empty_split_is_a_user_error(tmp_path):
    write_class_folders(tmp_path / "src", num_classes=2, per_class=3, size=(16, 16))
    convert(tmp_path / "src", tmp_path / "ds", validation_percent=0)
    assert DatasetInfo.load(tmp_path / "ds").count("validation") == 0
    assert list(read_examples(tmp_path / "ds", "validation")) == []
    with pytest.raises(UserError, match="no validation images"):
        make_dataset(tmp_path / "ds", "validation", 16, 4, training=False)
    assert tf.is_tensor(next(iter(make_dataset(tmp_path / "ds", "train", 16, 2, True)))[0])
