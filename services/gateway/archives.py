"""Safe extraction of an uploaded dataset archive (zip, tar, tar.gz/bz2/xz).

Refused: absolute paths, ``..``, links of any kind, device files and fifos,
more than ``max_files`` entries (files and folders alike), more than
``max_unpacked_bytes`` unpacked, an unpacked/packed ratio above ``max_ratio``
(zip bombs). Sizes are counted on the bytes actually written, not on what the
archive's headers claim. The format is recognised by content, never by the
client's file name.

Memory stays bounded whatever the entry count: a zip's central directory is
counted from its end record and headers before ``zipfile`` builds an object per
entry, and a tar is read one member at a time without keeping the members."""

from __future__ import annotations

import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, cast

from incept.errors import UserError

_CHUNK = 1 << 20


class ArchiveError(UserError):
    """The archive is unusable or unsafe; the message says why."""


@dataclass
class ExtractReport:
    files: int
    unpacked_bytes: int
    root: Path  # the folder holding the class folders
    extracted: Path  # the folder it was all unpacked into (root or above it)


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
        self.entries = 0
        self.files = 0
        self.bytes = 0

    def add_entry(self, is_file: bool) -> None:
        """Every entry counts, folders and skipped ones too: each costs memory and inodes."""
        self.entries += 1
        self.files += is_file
        if self.entries > self.limits.max_files:
            raise ArchiveError(f"the archive has more than {self.limits.max_files} entries "
                               "(files and folders)")

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


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CD_ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header


def _end_record(f, size: int) -> tuple[int, int, int]:
    """(entries, central directory size, its offset) from the end record (Zip64's if used)."""
    tail_len = min(size, _EOCD.size + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06", 0, tail_len - _EOCD.size + 4)  # the last that fits, as zipfile
    if pos < 0:
        raise ArchiveError("the zip has no end of central directory record")
    _sig, _disk, _cd_disk, _here, entries, cd_size, cd_offset, _comment = _EOCD.unpack_from(tail, pos)
    eocd_at = size - tail_len + pos
    if entries == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):
        f.seek(eocd_at - _ZIP64_LOCATOR.size)
        locator = _ZIP64_LOCATOR.unpack(f.read(_ZIP64_LOCATOR.size))
        f.seek(locator[2])
        record = _ZIP64_EOCD.unpack(f.read(_ZIP64_EOCD.size))
        if locator[0] != b"PK\x06\x07" or record[0] != b"PK\x06\x06":
            raise ArchiveError("the zip's Zip64 end record is damaged")
        entries, cd_size, cd_offset = record[7], record[8], record[9]
        eocd_at = locator[2]
    # Data prepended to the zip (self-extractors) shifts every offset alike.
    return entries, cd_size, eocd_at - cd_size


def _check_central_directory(path: Path, budget: _Budget) -> None:
    """Count a zip's entries before ``zipfile`` reads its central directory
    (which builds an object per entry, whatever the count): from the end
    record's total, then header by header, without keeping any."""
    limit = budget.limits.max_files
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        entries, cd_size, cd_start = _end_record(f, size)
        if entries > limit:
            raise ArchiveError(f"the archive has {entries} entries; the limit is {limit}")
        if cd_start < 0 or cd_start + cd_size > size:
            raise ArchiveError("the zip's central directory lies outside the file")
        f.seek(cd_start)
        counted = 0
        while f.tell() < cd_start + cd_size:
            header = f.read(_CD_ENTRY.size)
            if len(header) < _CD_ENTRY.size or header[:4] != b"PK\x01\x02":
                raise ArchiveError("the zip's central directory is damaged")
            counted += 1
            if counted > limit:
                raise ArchiveError(f"the archive has more than {limit} entries (files and folders)")
            name_len, extra_len, comment_len = _CD_ENTRY.unpack(header)[12:15]
            f.seek(name_len + extra_len + comment_len, 1)


def _extract_zip(path: Path, root: Path, budget: _Budget) -> None:
    _check_central_directory(path, budget)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            budget.add_entry(not info.is_dir())
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
            with zf.open(info) as src:
                _copy(src, target, budget)


def _extract_tar(path: Path, root: Path, budget: _Budget) -> None:
    with tarfile.open(path, mode="r:*") as tf:
        # One member at a time: iterating a TarFile (or next()) appends every
        # member to tf.members, a list as long as the archive; it is cleared.
        while (member := tf.next()) is not None:
            cast(Any, tf).members.clear()  # an attribute typeshed does not declare
            budget.add_entry(member.isfile())
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
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError, ValueError,
            struct.error) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(f"the archive is damaged: {type(e).__name__}: {e}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return ExtractReport(files=budget.files, unpacked_bytes=budget.bytes, root=class_root,
                         extracted=dest)
