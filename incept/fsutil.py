"""Atomic writes: a reader on the shared volume sees the old file or folder or
the new one, never a half-written one. Write beside the target, fsync, rename;
every published folder (a converted dataset, an extracted download, an
exported model version) goes through ``atomic_directory``."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """``durable=False``: atomic, not fsynced -- for a file rewritten every few
    seconds whose loss in a crash costs nothing (a progress mirror). An fsync
    waits for the journal, and so behind whatever other data the kernel is
    still writing back: seconds, after a trainer's checkpoints."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str, *, durable: bool = True) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def write_json_atomic(path: Path, obj: object, *, durable: bool = True) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", durable=durable)


def fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


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
    return bool(fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0)


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


@contextlib.contextmanager
def atomic_directory(target: Path, *, publish: Callable[[Path], None] | None = None
                     ) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` to fill; when the body ends
    normally it is fsynced and published: ``publish(tmp)`` if given (e.g. a rename
    to the next free version), else it replaces ``target`` (``replace_directory``).
    On an error -- or when the body removed the folder, having nothing to
    publish -- nothing is published; the temporary folder never stays behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if tmp.exists():
            fsync_tree(tmp)
            (publish or (lambda new: replace_directory(new, target)))(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
