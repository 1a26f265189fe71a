"""Swapping a finished folder into place, so readers see the old folder or the new one."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

from incept.fsutil import fsync_dir

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2; False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    fn = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_directory(new: Path, target: Path) -> None:
    """Make the complete folder ``new`` become ``target``. An existing target is
    exchanged atomically where the OS allows it (``new`` then holds the old
    content, for the caller to delete), otherwise moved aside first."""
    if not target.exists():
        os.rename(new, target)
    elif not _exchange(new, target):
        old = target.with_name(f".{target.name}.old")
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(old)
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)
