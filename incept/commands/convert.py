"""``incept convert SRC_DIR --out DATASET_DIR``: class folders -> TFRecords."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src_dir", type=Path, help="folder with one sub-folder of images per class")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--validation-percent", type=float, default=10.0,
                        help="share of each class held out for validation (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--shards", type=int, default=None,
                        help="shards per split (default: about 100 MB each)")
    parser.add_argument("--force", action="store_true",
                        help="convert even if the output is up to date")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from incept.data.convert import convert

    show_bar = sys.stderr.isatty() and not args.no_progress
    if not show_bar:
        report = convert(args.src_dir, args.out, args.validation_percent, args.seed, args.shards,
                         force=args.force)
    else:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("converting"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("convert", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            report = convert(args.src_dir, args.out, args.validation_percent, args.seed,
                             args.shards, progress=progress, force=args.force)
    print(report.summary())
    return 0
