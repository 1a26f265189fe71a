"""Folder of class folders -> sharded TFRecords (slim's feature keys).

``SRC/<class>/<image>`` becomes ``OUT/train-00000-of-0000N.tfrecord``,
``OUT/validation-*.tfrecord``, ``OUT/labels.txt`` (``id:name``) and
``OUT/dataset.json``. The split is stratified per class and fixed by the seed.
Output is built in a temporary folder beside OUT and swapped in whole, so a
crash never leaves half a dataset. Every file is read and decoded exactly once
(in a thread pool: Pillow and TFRecord writes release the GIL).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from incept.data.images import SourceImage, read_source_image
from incept.errors import UserError
from incept.fsutil import atomic_directory, write_json_atomic
from incept.layout import DATASET_THUMBNAILS, thumbnail_key
from incept.resources import limits as resource_limits

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "validation")
DATASET_JSON = "dataset.json"
LABELS_TXT = "labels.txt"
# Small JPEGs for the page: every validation image (the evaluator's per-image
# results point at them) and the first few training images of each class.
THUMBNAIL_PX = 128
THUMBNAIL_SAMPLES = 4
# Without --shards, aim for shards of about this size (big enough to stream
# efficiently, small enough that readers can interleave several).
TARGET_SHARD_BYTES = 100 * 1024 * 1024

Progress = Callable[[int, int], None]


@dataclass
class ConvertReport:
    out_dir: Path
    class_names: list[str]
    counts: dict[str, int]                      # written per split
    per_class: dict[str, dict[str, int]]        # split -> class -> written
    skipped: list[tuple[str, str]]              # (relative path, reason)
    converted: list[tuple[str, str]]            # (relative path, what was converted)
    stray_files: list[str]                      # files at the top level of the source
    empty_classes: list[str]                    # class folders without any file
    fingerprint: str
    unchanged: bool = False                     # nothing to do: output already up to date
    shards: dict[str, int] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        """JSON-ready (for job results and API answers)."""
        return {"out_dir": str(self.out_dir), "class_names": self.class_names,
                "counts": self.counts, "per_class": self.per_class, "written": self.written,
                "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
                "converted": [{"file": f, "conversion": c} for f, c in self.converted],
                "stray_files": self.stray_files, "empty_classes": self.empty_classes,
                "fingerprint": self.fingerprint, "unchanged": self.unchanged,
                "shards": self.shards, "summary": self.summary()}

    def skipped_reasons(self) -> Counter:
        return Counter(_reason_kind(reason) for _, reason in self.skipped)

    def summary(self) -> str:
        if self.unchanged:
            head = f"{self.out_dir}: up to date ({self.written} images, source unchanged)"
        else:
            head = (f"{self.out_dir}: wrote {self.written} images "
                    + ", ".join(f"{s} {self.counts.get(s, 0)}" for s in SPLITS)
                    + f" in {len(self.class_names)} classes; skipped {len(self.skipped)}")
        lines = [head]
        for kind, n in sorted(self.skipped_reasons().items()):
            lines.append(f"  skipped {n}: {kind}")
        for rel, reason in self.skipped[:20]:
            lines.append(f"    {rel}: {reason}")
        if len(self.skipped) > 20:
            lines.append(f"    ... and {len(self.skipped) - 20} more (see dataset.json)")
        if self.converted:
            lines.append(f"  converted to 8-bit RGB and kept: {len(self.converted)}")
        if self.stray_files:
            lines.append(f"  ignored {len(self.stray_files)} file(s) outside class folders: "
                         + ", ".join(self.stray_files[:10]))
        if self.empty_classes:
            lines.append("  empty class folder(s) ignored: " + ", ".join(self.empty_classes))
        return "\n".join(lines)


def _thumbnailed(split: dict[str, list[tuple[str, int]]]) -> set[str]:
    wanted = {rel for rel, _ in split["validation"]}
    per_class: Counter = Counter()
    for rel, label in split["train"]:
        if per_class[label] < THUMBNAIL_SAMPLES:
            per_class[label] += 1
            wanted.add(rel)
    return wanted


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


@dataclass
class _Source:
    root: Path
    class_names: list[str]
    files: dict[str, list[str]]    # class -> relative paths (sorted)
    stray_files: list[str]
    empty_classes: list[str]
    hidden: list[str]
    stat_fingerprint: str


def scan_source(src_dir: str | Path) -> _Source:
    root = Path(src_dir)
    if not root.is_dir():
        raise UserError(f"source folder {str(src_dir)!r} does not exist or is not a folder")
    stray, classes, empty, hidden = [], [], [], []
    files: dict[str, list[str]] = {}
    stat_hash = hashlib.sha256()
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            rels: list[str] = []
            for dirpath, dirnames, filenames in os.walk(entry.path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    if name.startswith("."):
                        hidden.append(rel)
                        continue
                    st = os.stat(os.path.join(dirpath, name))
                    stat_hash.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                    rels.append(rel)
            if rels:
                classes.append(entry.name)
                files[entry.name] = rels
            else:
                empty.append(entry.name)
        else:
            stray.append(entry.name)
    if len(classes) < 2:
        raise UserError(
            f"{root} has {len(classes)} non-empty class folder(s)"
            + (f" ({', '.join(classes)})" if classes else "")
            + "; need at least 2: one folder per class, images inside"
            + (f" (empty: {', '.join(empty)})" if empty else "")
            + (f"; {len(stray)} file(s) lie at the top level, outside any class folder"
               if stray else ""))
    return _Source(root, classes, files, stray, empty, hidden, stat_hash.hexdigest())


def split_files(files: dict[str, list[str]], validation_percent: float,
                seed: int) -> dict[str, list[tuple[str, int]]]:
    """Stratified split: each class contributes round(n * pct / 100) files to
    validation (at least one if pct > 0 and the class has 2+ files). Both
    splits are shuffled across classes; all of it depends only on the seed."""
    if not 0 <= validation_percent < 100:
        raise UserError(f"--validation-percent must be in [0, 100), got {validation_percent}")
    out: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for label, name in enumerate(sorted(files)):
        rels = sorted(files[name])
        random.Random(f"{seed}:{name}").shuffle(rels)
        n_val = math.floor(len(rels) * validation_percent / 100 + 0.5)
        if validation_percent > 0 and len(rels) >= 2:
            n_val = max(n_val, 1)
        n_val = min(n_val, len(rels) - 1) if len(rels) > 1 else n_val
        out["validation"] += [(r, label) for r in rels[:n_val]]
        out["train"] += [(r, label) for r in rels[n_val:]]
    for split in SPLITS:
        out[split].sort()
        random.Random(f"{seed}:{split}").shuffle(out[split])
    return out


def _options(validation_percent: float, seed: int, shards: int | None) -> dict:
    return {"format_version": FORMAT_VERSION, "validation_percent": validation_percent,
            "seed": seed, "shards": shards}


def _existing_info(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / DATASET_JSON).read_text())
    except (OSError, ValueError):
        return None


def convert(src_dir: str | Path, out_dir: str | Path, validation_percent: float = 10,
            seed: int = 0, shards: int | None = None, *, workers: int | None = None,
            progress: Progress | None = None, force: bool = False) -> ConvertReport:
    """Convert ``src_dir`` (one folder per class) into a TFRecord dataset at ``out_dir``.

    Does nothing when ``out_dir`` already holds a conversion of the same source
    with the same options. Raises UserError for unusable input."""
    if shards is not None and shards < 1:
        raise UserError(f"--shards must be at least 1, got {shards}")
    out_dir = Path(out_dir)
    source = scan_source(src_dir)
    src_real, out_real = source.root.resolve(), out_dir.resolve()
    if out_real == src_real or src_real in out_real.parents or out_real in src_real.parents:
        raise UserError(f"--out {out_dir} must lie outside the source folder {src_dir} "
                        "(and not contain it)")
    options = _options(validation_percent, seed, shards)
    existing = _existing_info(out_dir)
    if (not force and existing and existing.get("options") == options
            and existing.get("source", {}).get("stat_fingerprint") == source.stat_fingerprint
            and existing.get("class_names") == source.class_names):
        return _report_from_info(out_dir, existing, unchanged=True)
    if out_dir.exists() and not existing and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} exists and is not a converted dataset; "
                        "choose another --out or remove it")
    split = split_files(source.files, validation_percent, seed)
    with atomic_directory(out_dir) as tmp:
        info = _write_dataset(source, split, tmp, options, shards, workers, progress)
        if (not force and existing and existing.get("fingerprint") == info["fingerprint"]
                and existing.get("options") == options):
            # Same content (files touched or copied): keep the dataset, remember the new stats.
            shutil.rmtree(tmp)  # nothing to publish
            existing["source"] = info["source"]
            write_json_atomic(out_dir / DATASET_JSON, existing)
            return _report_from_info(out_dir, existing, unchanged=True)
    return _report_from_info(out_dir, info, unchanged=False)


def _write_dataset(source: _Source, split: dict[str, list[tuple[str, int]]], tmp: Path,
                   options: dict, shards: int | None, workers: int | None,
                   progress: Progress | None) -> dict:
    import tensorflow as tf

    total = sum(len(v) for v in split.values())
    done = 0
    per_class = {s: dict.fromkeys(source.class_names, 0) for s in SPLITS}
    skipped: list[tuple[str, str]] = []
    converted: list[tuple[str, str]] = []
    digests: dict[str, str] = {}
    shard_files: dict[str, list[str]] = {}
    # The cgroup's CPU quota, not the host's cores (os.cpu_count() in a container).
    workers = workers or resource_limits().threads
    thumbnailed = _thumbnailed(split)
    samples: dict[str, list[str]] = {n: [] for n in source.class_names}
    (tmp / DATASET_THUMBNAILS).mkdir()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convert") as pool:
        for split_name in SPLITS:
            items = split[split_name]
            n_shards = _num_shards(source, items, shards)
            names = [f"{split_name}-{i:05d}-of-{n_shards:05d}.tfrecord" for i in range(n_shards)]
            shard_files[split_name] = names
            bounds = [len(items) * i // n_shards for i in range(n_shards + 1)]
            results = _ordered_map(pool, lambda it: read_source_image(
                source.root / it[0], thumbnail_px=THUMBNAIL_PX if it[0] in thumbnailed else None),
                items, window=4 * workers)
            index = 0
            for shard_index, name in enumerate(names):
                with tf.io.TFRecordWriter(str(tmp / name)) as writer:
                    for _ in range(bounds[shard_index + 1] - bounds[shard_index]):
                        rel, label = items[index]
                        image: SourceImage = next(results)
                        index += 1
                        digests[rel] = image.sha256
                        if image.encoded is None:
                            skipped.append((rel, image.reason))
                        else:
                            if image.converted:
                                converted.append((rel, image.converted))
                            writer.write(_example(image, image.encoded, label, rel))
                            per_class[split_name][source.class_names[label]] += 1
                            _keep_thumbnail(tmp, image, rel, samples[source.class_names[label]])
                        done += 1
                        if progress:
                            progress(done, total)
    for rel in source.hidden:
        skipped.append((rel, "hidden file"))
    info = _dataset_info(source, options, per_class, shard_files, digests, skipped, converted)
    info["thumbnails"] = {"size": THUMBNAIL_PX, "samples": samples}
    (tmp / LABELS_TXT).write_text("".join(f"{i}:{n}\n" for i, n in enumerate(source.class_names)))
    (tmp / DATASET_JSON).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _dataset_info(source: _Source, options: dict, per_class: dict, shard_files: dict,
                  digests: dict[str, str], skipped: list, converted: list) -> dict:
    content = hashlib.sha256()
    for rel in sorted(digests):
        content.update(f"{rel}\0{digests[rel]}\n".encode())
    counts = {s: sum(per_class[s].values()) for s in SPLITS}
    if counts["train"] == 0:
        raise UserError(f"no usable images in {source.root}: "
                        + "; ".join(f"{r}: {why}" for r, why in skipped[:5]))
    info = {
        "format_version": FORMAT_VERSION,
        "class_names": source.class_names,
        "num_classes": len(source.class_names),
        "counts": counts,
        "per_class": per_class,
        "shards": shard_files,
        "seed": options["seed"],
        "validation_percent": options["validation_percent"],
        "options": options,
        "fingerprint": content.hexdigest(),
        "source": {"path": str(source.root.resolve()), "stat_fingerprint": source.stat_fingerprint,
                   "files": len(digests)},
        "skipped": [{"file": r, "reason": why} for r, why in skipped],
        "converted": [{"file": r, "conversion": what} for r, what in converted],
        "stray_files": source.stray_files,
        "empty_classes": source.empty_classes,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return info


def _keep_thumbnail(out_dir: Path, image: SourceImage, rel: str, samples: list[str]) -> None:
    if image.thumbnail is None:
        return
    key = thumbnail_key(rel)
    (out_dir / DATASET_THUMBNAILS / f"{key}.jpg").write_bytes(image.thumbnail)
    if len(samples) < THUMBNAIL_SAMPLES:
        samples.append(key)


def _num_shards(source: _Source, items: list[tuple[str, int]], shards: int | None) -> int:
    if not items:
        return 1
    if shards is not None:
        return max(1, min(shards, len(items)))
    size = sum(os.path.getsize(source.root / rel) for rel, _ in items)
    return max(1, min(len(items), math.ceil(size / TARGET_SHARD_BYTES)))


def _example(image: SourceImage, encoded: bytes, label: int, rel: str) -> bytes:
    import tensorflow as tf

    def b(v: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": b(encoded),
        "image/format": b(image.format.encode()),
        "image/class/label": i(label),
        "image/height": i(image.height),
        "image/width": i(image.width),
        "image/filename": b(rel.encode()),
    })).SerializeToString()


def _ordered_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable,
                 window: int) -> Iterator:
    """Like ``pool.map`` but with at most ``window`` results in flight (bounded memory)."""
    pending: list[Future] = []
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            break
    head = 0
    while head < len(pending):
        yield pending[head].result()
        pending[head] = None  # type: ignore[call-overload]  # free the result
        head += 1
        nxt = next(it, _END)
        if nxt is not _END:
            pending.append(pool.submit(fn, nxt))


_END = object()


def _report_from_info(out_dir: Path, info: dict, unchanged: bool) -> ConvertReport:
    return ConvertReport(
        out_dir=out_dir,
        class_names=list(info["class_names"]),
        counts=dict(info["counts"]),
        per_class={s: dict(v) for s, v in info["per_class"].items()},
        skipped=[(s["file"], s["reason"]) for s in info.get("skipped", [])],
        converted=[(c["file"], c["conversion"]) for c in info.get("converted", [])],
        stray_files=list(info.get("stray_files", [])),
        empty_classes=list(info.get("empty_classes", [])),
        fingerprint=info["fingerprint"],
        unchanged=unchanged,
        shards={s: len(v) for s, v in info.get("shards", {}).items()},
    )
