"""incept.data.convert on generated class folders, including broken and odd files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from incept.cli import main as cli_main
from incept.data.convert import convert
from incept.data.dataset import DatasetInfo, read_examples
from incept.data.synthetic import write_class_folders
from incept.errors import UserError


def _examples(out: Path, split: str) -> list[dict]:
    return [{k: v.numpy() for k, v in ex.items()} for ex in read_examples(out, split)]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_convert_writes_stratified_split_labels_and_description(tmp_path):
    names = write_class_folders(tmp_path / "src", num_classes=3, per_class=10, size=(40, 30))
    out = tmp_path / "ds"
    report = convert(tmp_path / "src", out, validation_percent=20, seed=0)

    assert report.class_names == names == ["daisy", "dandelion", "roses"]
    assert report.counts == {"train": 24, "validation": 6}
    assert (out / "labels.txt").read_text() == "0:daisy\n1:dandelion\n2:roses\n"
    info = json.loads((out / "dataset.json").read_text())
    assert info["per_class"]["validation"] == {"daisy": 2, "dandelion": 2, "roses": 2}
    assert info["seed"] == 0 and len(info["fingerprint"]) == 64
    assert sorted(p.name for p in out.glob("*.tfrecord")) == [
        "train-00000-of-00001.tfrecord", "validation-00000-of-00001.tfrecord"]

    train, val = _examples(out, "train"), _examples(out, "validation")
    files = [e["filename"].decode() for e in train + val]
    assert len(files) == len(set(files)) == 30
    for ex in train + val:
        folder = ex["filename"].decode().split("/")[0]
        assert names[ex["label"]] == folder
        assert ex["format"] == b"jpeg"
        decoded = tf.io.decode_image(ex["image"]).numpy()
        assert decoded.shape == (ex["height"], ex["width"], 3) == (30, 40, 3)
        src = (tmp_path / "src" / ex["filename"].decode()).read_bytes()
        assert ex["image"] == src  # 8-bit RGB JPEGs are stored untouched
    # slim's feature keys are all there
    record = next(iter(tf.data.TFRecordDataset(str(out / "train-00000-of-00001.tfrecord"))))
    keys = set(tf.train.Example.FromString(record.numpy()).features.feature)
    assert keys == {"image/encoded", "image/format", "image/class/label", "image/height",
                    "image/width", "image/filename"}
    assert _leftovers(tmp_path) == []


def test_thumbnails_of_every_validation_image_and_a_few_per_class(tmp_path):
    from incept.data.convert import THUMBNAIL_PX, THUMBNAIL_SAMPLES
    from incept.layout import Layout, thumbnail_key

    write_class_folders(tmp_path / "src", num_classes=3, per_class=10, size=(400, 300))
    layout = Layout(tmp_path / "root")
    convert(tmp_path / "src", layout.dataset("ds"), validation_percent=20, seed=0)
    info = json.loads((layout.dataset("ds") / "dataset.json").read_text())
    samples = info["thumbnails"]["samples"]
    assert sorted(samples) == ["daisy", "dandelion", "roses"]
    assert all(len(keys) == THUMBNAIL_SAMPLES for keys in samples.values())
    val = [e["filename"].decode() for e in _examples(layout.dataset("ds"), "validation")]
    train = [e["filename"].decode() for e in _examples(layout.dataset("ds"), "train")]
    for rel in val:  # the evaluator's per-image results point at these
        with Image.open(layout.dataset_thumbnail("ds", thumbnail_key(rel))) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) == THUMBNAIL_PX
            assert thumb.size == (THUMBNAIL_PX, THUMBNAIL_PX * 3 // 4)  # aspect kept
    for name, keys in samples.items():
        assert keys == [thumbnail_key(r) for r in train if r.startswith(name + "/")][:THUMBNAIL_SAMPLES]
    written = len(list((layout.dataset("ds") / "thumbnails").iterdir()))
    assert written == len(val) + 3 * THUMBNAIL_SAMPLES
    with pytest.raises(ValueError):
        layout.dataset_thumbnail("ds", "../../etc/passwd")


def test_split_is_deterministic_per_seed_and_shards_are_honoured(tmp_path):
    write_class_folders(tmp_path / "src", num_classes=2, per_class=15, size=(32, 32))

    def val_files(out):
        return sorted(e["filename"] for e in _examples(out, "validation"))

    convert(tmp_path / "src", tmp_path / "a", seed=3, shards=3)
    convert(tmp_path / "src", tmp_path / "b", seed=3, shards=3)
    convert(tmp_path / "src", tmp_path / "c", seed=4, shards=3)
    assert val_files(tmp_path / "a") == val_files(tmp_path / "b")
    assert val_files(tmp_path / "a") != val_files(tmp_path / "c")
    assert len(list((tmp_path / "a").glob("train-*-of-00003.tfrecord"))) == 3
    assert [e["filename"] for e in _examples(tmp_path / "a", "train")] == \
        [e["filename"] for e in _examples(tmp_path / "b", "train")]
    assert DatasetInfo.load(tmp_path / "a").fingerprint == DatasetInfo.load(tmp_path / "c").fingerprint


def test_rerun_on_unchanged_input_does_nothing_and_changes_are_picked_up(tmp_path):
    write_class_folders(tmp_path / "src", num_classes=2, per_class=6, size=(32, 32))
    out = tmp_path / "ds"
    first = convert(tmp_path / "src", out)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = convert(tmp_path / "src", out)
    assert again.unchanged and again.counts == first.counts
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp

    # Touched but identical content: still nothing rewritten except the remembered stats.
    some = next((tmp_path / "src" / "daisy").iterdir())
    os.utime(some, ns=(1, 1))
    touched = convert(tmp_path / "src", out)
    assert touched.unchanged
    assert (out / "train-00000-of-00001.tfrecord").stat().st_mtime_ns == \
        stamp["train-00000-of-00001.tfrecord"]

    # New content: a new dataset with a new fingerprint replaces the old one.
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "src" / "daisy" / "new.png")
    changed = convert(tmp_path / "src", out)
    assert not changed.unchanged and changed.fingerprint != first.fingerprint
    assert changed.written == first.written + 1
    assert _leftovers(tmp_path) == []


def test_replacing_a_dataset_is_all_or_nothing(tmp_path):
    write_class_folders(tmp_path / "src", num_classes=2, per_class=6, size=(32, 32))
    out = tmp_path / "ds"
    convert(tmp_path / "src", out, seed=0)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(done, total):
        if done == 5:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        convert(tmp_path / "src", out, seed=1, progress=crash)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _leftovers(tmp_path) == []

    with pytest.raises(RuntimeError):
        convert(tmp_path / "src", tmp_path / "fresh", progress=crash)
    assert not (tmp_path / "fresh").exists()

    convert(tmp_path / "src", out, seed=1)
    assert json.loads((out / "dataset.json").read_text())["seed"] == 1
    assert _leftovers(tmp_path) == []


def _save(image: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)


def test_bad_and_odd_files_are_reported_or_converted(tmp_path):
    src = tmp_path / "src"
    write_class_folders(src, num_classes=2, per_class=4, size=(32, 24))
    good = (src / "daisy" / "daisy_0000.jpg").read_bytes()
    (src / "daisy" / "empty.jpg").write_bytes(b"")
    (src / "daisy" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (src / "daisy" / "notes.txt").write_text("not a picture")
    (src / "daisy" / "garbage.png").write_bytes(os.urandom(500))
    (src / "daisy" / ".DS_Store").write_bytes(b"\0\0")
    _save(Image.new("L", (20, 10), 77), src / "dandelion" / "gray.jpg")
    _save(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), src / "dandelion" / "cmyk.jpg")
    gray16 = Image.fromarray(np.full((10, 20), 32896, dtype=np.uint16))
    _save(gray16, src / "dandelion" / "gray16.png")
    _save(Image.new("RGBA", (20, 10), (0, 0, 255, 128)), src / "dandelion" / "alpha.png")
    _save(Image.new("RGB", (20, 10), (255, 0, 0)).convert("P"), src / "dandelion" / "palette.gif")
    (src / "LICENSE.txt").write_text("stray")
    (src / "empty_class").mkdir()

    report = convert(src, tmp_path / "ds", validation_percent=0)
    skipped = dict(report.skipped)
    assert skipped["daisy/empty.jpg"].startswith("empty file")
    assert skipped["daisy/truncated.jpg"].startswith("truncated or corrupt image")
    assert skipped["daisy/notes.txt"] == "not an image"
    assert skipped["daisy/garbage.png"] == "not an image"
    assert skipped["daisy/.DS_Store"] == "hidden file"
    assert report.stray_files == ["LICENSE.txt"]
    assert report.empty_classes == ["empty_class"]
    assert report.class_names == ["daisy", "dandelion"]
    assert report.counts == {"train": 13, "validation": 0}
    assert {rel for rel, _ in report.converted} == {
        "dandelion/gray.jpg", "dandelion/cmyk.jpg", "dandelion/gray16.png", "dandelion/alpha.png",
        "dandelion/palette.gif"}
    summary = report.summary()
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["written"] == 13 and len(as_json["skipped"]) == 5
    assert "skipped 5" in summary and "LICENSE.txt" in summary and "empty_class" in summary

    pixels = {e["filename"].decode(): tf.io.decode_image(e["image"]).numpy()
              for e in _examples(tmp_path / "ds", "train")}
    for rel in ("dandelion/gray.jpg", "dandelion/cmyk.jpg", "dandelion/gray16.png",
                "dandelion/alpha.png", "dandelion/palette.gif"):
        assert pixels[rel].shape == (10, 20, 3), rel
    assert abs(int(pixels["dandelion/gray.jpg"][5, 10, 0]) - 77) <= 2
    assert np.all(pixels["dandelion/gray16.png"] == 128)       # scaled, not clipped to 255
    assert tuple(pixels["dandelion/alpha.png"][0, 0]) == (0, 0, 255)
    assert tuple(pixels["dandelion/palette.gif"][0, 0]) == (255, 0, 0)
    r, g, b = pixels["dandelion/cmyk.jpg"][5, 10].astype(int)
    assert r > 200 and g < 60 and b < 60                        # CMYK (0,255,255,0) is red


def test_too_few_classes_is_a_user_error_without_trace(tmp_path, capsys):
    write_class_folders(tmp_path / "src", num_classes=1, per_class=3, size=(16, 16))
    (tmp_path / "src" / "empty").mkdir()
    with pytest.raises(UserError, match="need at least 2"):
        convert(tmp_path / "src", tmp_path / "ds")
    assert cli_main(["convert", str(tmp_path / "src"), "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "need at least 2" in err and "Traceback" not in err
    assert cli_main(["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "ds")]) == 2
    write_class_folders(tmp_path / "two", num_classes=2, per_class=2, size=(16, 16))
    for out in (tmp_path / "two" / "ds", tmp_path / "two", tmp_path):
        with pytest.raises(UserError, match="outside the source"):
            convert(tmp_path / "two", out)
    assert not (tmp_path / "ds").exists()


def test_only_broken_images_is_a_user_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        (tmp_path / "src" / name / "x.jpg").write_bytes(b"nope")
    with pytest.raises(UserError, match="no usable images"):
        convert(tmp_path / "src", tmp_path / "ds")
    assert not (tmp_path / "ds").exists() and _leftovers(tmp_path) == []


def test_cli_convert_prints_counts(tmp_path, capsys):
    write_class_folders(tmp_path / "src", num_classes=2, per_class=5, size=(16, 16))
    good = (tmp_path / "src" / "daisy" / "daisy_0000.jpg").read_bytes()
    (tmp_path / "src" / "daisy" / "broken.jpg").write_bytes(good[:-200])
    rc = cli_main(["convert", str(tmp_path / "src"), "--out", str(tmp_path / "ds"),
                   "--validation-percent", "20", "--seed", "1", "--shards", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "wrote 10 images train 8, validation 2" in out
    assert "skipped 1: truncated or corrupt image" in out
    assert len(list((tmp_path / "ds").glob("train-*.tfrecord"))) == 2
    cli_main(["convert", str(tmp_path / "src"), "--out", str(tmp_path / "ds"),
              "--validation-percent", "20", "--seed", "1", "--shards", "2"])
    assert "up to date" in capsys.readouterr().out


def test_cli_shows_a_progress_bar_on_a_terminal(tmp_path):
    import pty
    import subprocess
    import sys
    import threading

    write_class_folders(tmp_path / "src", num_classes=2, per_class=5, size=(16, 16))
    primary, secondary = pty.openpty()
    chunks: list[bytes] = []

    def drain():  # read the terminal while the command runs, so it never blocks on it
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.run(
        [sys.executable, "-m", "incept.cli", "convert", str(tmp_path / "src"),
         "--out", str(tmp_path / "ds")],
        stdout=subprocess.PIPE, stderr=secondary, timeout=300, check=False)
    os.close(secondary)
    reader.join(timeout=10)
    os.close(primary)
    assert proc.returncode == 0
    assert b"wrote 10 images" in proc.stdout
    assert b"converting" in b"".join(chunks)  # the bar, drawn on the terminal only
