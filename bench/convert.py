"""Benchmark ``incept convert`` against its floor: reading and decoding every
file once, on the same cores, measured in the same run.

    python bench/convert.py [--quick] [--images N] [--data-dir DIR] [--workers W]

Without --data-dir it generates N flower-photo-sized JPEGs (about 320x240,
~60 KB) in 5 class folders. Goal: conversion within 1.5x of the floor.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import bench_parser, goal, report

GOAL_RATIO = 1.5


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/**/*") if p.is_file() and not p.name.startswith("."))


def floor_seconds(files: list[Path], workers: int) -> float:
    """Read + fully decode each file once, in a pool as wide as the converter's."""
    from PIL import Image

    def read_decode(path: Path) -> None:
        try:
            with Image.open(io.BytesIO(path.read_bytes())) as im:
                im.load()
        except OSError:
            pass  # undecodable files cost the converter a read too

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(read_decode, files):
            pass
    return time.perf_counter() - start


def convert_seconds(src: Path, out: Path, workers: int) -> float:
    from incept.data.convert import convert

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    convert(src, out, validation_percent=10, seed=0, workers=workers, force=True)
    return time.perf_counter() - start


def main() -> int:
    parser = bench_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None,
                        help="generated images (default 2000, --quick 400)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="convert this folder of class folders instead of generated images")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=None, help="paired runs (default 5, --quick 3)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)

    import tensorflow as tf  # noqa: F401  (imported before timing: start-up is not conversion)

    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        if args.data_dir:
            src = args.data_dir
        else:
            from incept.data.synthetic import write_class_folders

            n = args.images or (400 if args.quick else 2000)
            src = work / "src"
            write_class_folders(src, num_classes=5, per_class=max(1, n // 5), size=(320, 240),
                                noise=32.0, quality=94)
        files = image_files(src)
        total_bytes = sum(p.stat().st_size for p in files)
        report("images", len(files))
        report("mean file size", total_bytes / max(1, len(files)) / 1024, "KB")
        report("workers", args.workers)
        floor_s, convert_s = [], []
        floor_seconds(files, args.workers)  # warm the page cache for both contenders
        convert_seconds(src, work / "out", args.workers)  # and TF's lazy initialisation
        for _ in range(repeats):
            floor_s.append(floor_seconds(files, args.workers))
            convert_s.append(convert_seconds(src, work / "out", args.workers))
        # The machine is shared: pair each conversion with a floor run right
        # before it and take the median ratio, so load changes cancel out.
        ratios = sorted(c / f for c, f in zip(convert_s, floor_s, strict=True))
        ratio = ratios[len(ratios) // 2]
        report("floor: read + decode", len(files) / min(floor_s), "images/s (best)")
        report("incept convert", len(files) / min(convert_s), "images/s (best)")
        print(f"{'paired ratios (convert / floor)':<32} " + " ".join(f"{r:.2f}" for r in ratios))
        report("convert / floor (time, median)", ratio)
        goal("convert_vs_floor", round(ratio, 2), "<=", GOAL_RATIO)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
