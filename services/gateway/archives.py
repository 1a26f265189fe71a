"""Safe extraction of an uploaded dataset archive (zip, tar, tar.gz/bz2/xz).

Refused: absolute paths, ``..``, links of any kind, device files and fifos,
more than ``max_files`` files, more than ``max_unpacked_bytes`` unpacked, an
unpacked/packed ratio above ``max_ratio`` (zip bombs). Sizes are counted on the
bytes actually written, not on what the archive's headers claim. The format
is recognised by content, never by the client's file name."""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from incept.errors import UserError

_CHUNK = 1 << 20


class ArchiveError(UserError):
    """The archive is unusable or unsafe; the message says why."""


@dataclass
class ExtractReport:
    files: int
    unpacked_bytes: int
    root: Path  # the folder holding the class folders


@dataclass
class Limits:
    max_files: int = 100_000
    max_unpacked_bytes: int = 8 * 1024**3
    max_ratio: float = 200.0


def archive_kind(path: Path) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, tarfile.TarError):
        pass
    raise ArchiveError("not a zip or tar archive (tar.gz, tar.bz2 and tar.xz are fine too)")


def _safe_relpath(name: str) -> PurePosixPath | None:
    """The member's path inside the target, or None for entries to skip (the root)."""
    name = name.replace("\\", "/")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"refusing absolute path {name!r} in the archive")
    parts = [part for part in p.parts if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise ArchiveError(f"refusing path {name!r}: it points outside the archive")
    if not parts:
        return None
    return PurePosixPath(*parts)


class _Budget:
    def __init__(self, limits: Limits, packed_bytes: int):
        self.limits = limits
        self.max_bytes = min(limits.max_unpacked_bytes, int(max(packed_bytes, 1) * limits.max_ratio))
        self.files = 0
        self.bytes = 0

    def add_file(self) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise ArchiveError(f"the archive has more than {self.limits.max_files} files")

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_unpacked_bytes:
            raise ArchiveError(f"the archive unpacks to more than {self.limits.max_unpacked_bytes} bytes")
        if self.bytes > self.max_bytes:
            raise ArchiveError("the archive's compression ratio is above "
                               f"{self.limits.max_ratio:g}: refusing a possible zip bomb")


def _copy(src, dest: Path, budget: _Budget) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "xb") as out:
        while chunk := src.read(_CHUNK):
            budget.add_bytes(len(chunk))
            out.write(chunk)


def _target(root: Path, rel: PurePosixPath) -> Path:
    target = (root / rel).resolve()
    if root not in target.parents:
        raise ArchiveError(f"refusing path {str(rel)!r}: it points outside the archive")
    return target


def _extract_zip(path: Path, root: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            rel = _safe_relpath(info.filename)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)  # 0 when the archiver stored permissions only
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise ArchiveError(f"refusing {info.filename!r}: links and special files are not allowed")
            if rel is None:
                continue
            target = _target(root, rel)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            budget.add_file()
            with zf.open(info) as src:
                _copy(src, target, budget)


def _extract_tar(path: Path, root: Path, budget: _Budget) -> None:
    with tarfile.open(path, mode="r:*") as tf:
        for member in tf:  # streaming: never trusts a member list read up front
            rel = _safe_relpath(member.name)
            if member.issym() or member.islnk():
                raise ArchiveError(f"refusing link {member.name!r} in the archive")
            if not (member.isfile() or member.isdir()):
                raise ArchiveError(f"refusing special file {member.name!r} (device, fifo, ...)")
            if rel is None:
                continue
            target = _target(root, rel)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            budget.add_file()
            src = tf.extractfile(member)
            if src is None:  # pragma: no cover - isfile() members always have data
                raise ArchiveError(f"cannot read {member.name!r}")
            with src:
                _copy(src, target, budget)


def _class_root(root: Path) -> Path:
    """Archives often wrap the class folders in one top folder (flower_photos/...)."""
    current = root
    while True:
        entries = [p for p in current.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        dirs = [p for p in entries if p.is_dir()]
        if len(dirs) == 1 and not [p for p in entries if p.is_file()]:
            current = dirs[0]
            continue
        return current


def extract_archive(archive: Path, dest: Path, limits: Limits | None = None) -> ExtractReport:
    """Extract ``archive`` into the new folder ``dest``; on any error ``dest`` is removed."""
    limits = limits or Limits()
    kind = archive_kind(archive)
    dest.mkdir(parents=True)
    root = dest.resolve()
    budget = _Budget(limits, archive.stat().st_size)
    try:
        if kind == "zip":
            _extract_zip(archive, root, budget)
        else:
            _extract_tar(archive, root, budget)
        if budget.files == 0:
            raise ArchiveError("the archive holds no files")
        class_root = _class_root(root)
        if not [p for p in class_root.iterdir() if p.is_dir()]:
            raise ArchiveError("the archive holds no class folders (expected <class>/<image> files)")
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError, ValueError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(f"the archive is damaged: {type(e).__name__}: {e}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return ExtractReport(files=budget.files, unpacked_bytes=budget.bytes, root=class_root)
