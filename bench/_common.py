"""Conventions shared by every ``bench/`` script.

Each script takes ``--quick`` (a small version that finishes in under two
minutes on 2 cores), prints its measurements next to a baseline measured in the
same run, and ends with one line per goal::

    GOAL <name> <measured> <op> <target> PASS|MISS
"""

from __future__ import annotations

import argparse
import operator
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Make ``import incept`` work when a script is run as ``python bench/x.py``.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}


def goal(name: str, measured: float, op: str, target: float) -> bool:
    """Print ``GOAL <name> <measured> <op> <target> PASS|MISS`` and return whether it passed."""
    if op not in _OPS:
        raise ValueError(f"unknown goal operator {op!r}; use one of {sorted(_OPS)}")
    passed = bool(_OPS[op](float(measured), float(target)))
    print(f"GOAL {name} {_fmt(measured)} {op} {_fmt(target)} {'PASS' if passed else 'MISS'}",
          flush=True)
    return passed


def _fmt(value: float) -> str:
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def bench_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the shared ``--quick`` flag; add script options to it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true",
        help="small version: finishes in under 2 minutes on 2 cores",
    )
    return parser


def add_quick_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--quick`` to an existing parser (for scripts that build their own)."""
    parser.add_argument(
        "--quick", action="store_true",
        help="small version: finishes in under 2 minutes on 2 cores",
    )
    return parser


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` then ``t[0]`` is the elapsed wall time in seconds."""
    box: list[float] = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start


def report(label: str, value: float, unit: str = "") -> None:
    """One aligned measurement line (not a goal)."""
    print(f"{label:<32} {_fmt(value):>10} {unit}".rstrip(), flush=True)


def exit_code(results: list[bool]) -> int:
    """0 when every goal passed; scripts may ``sys.exit(exit_code(...))``. A MISS is
    reported, not an error, so the default is to exit 0 anyway — use this only when asked."""
    return 0 if all(results) else 1
