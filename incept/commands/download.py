"""``incept download flowers|inception_v4 --out DIR``: fetch, verify, extract."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from incept.data.download import ARTIFACTS

    parser.add_argument("what", choices=sorted(ARTIFACTS), help="what to download")
    parser.add_argument("--out", type=Path, required=True, help="folder to download into")
    parser.add_argument("--url", default=None, help="a mirror of the official address")
    parser.add_argument("--sha256", default=None,
                        help="expected SHA-256 (the flowers archive has a pinned one; "
                             "inception_v4 is only verified when this is given)")
    parser.add_argument("--no-extract", action="store_true", help="keep the archive packed")


def run(args: argparse.Namespace) -> int:
    from incept.data.download import download

    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TransferSpeedColumn,
        )

        with Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("download", total=None)
            result, target = download(
                args.what, args.out, url=args.url, sha256=args.sha256,
                do_extract=not args.no_extract,
                progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        result, target = download(args.what, args.out, url=args.url, sha256=args.sha256,
                                  do_extract=not args.no_extract)
    state = "downloaded" if result.downloaded else "already present"
    if result.resumed_from:
        state += f" (resumed after {result.resumed_from} bytes)"
    print(f"{result.path}: {state}; sha256 {result.sha256}"
          + ("" if result.verified else " (NOT verified: no known digest; pass --sha256)"))
    if target is not None:
        print(f"extracted to {target}")
        if args.what == "inception_v4":
            print(f"checkpoint prefix: {target / 'inception_v4.ckpt'}")
    return 0
