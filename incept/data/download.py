"""Downloading the flowers archive and the Inception v4 checkpoint.

Downloads are resumable (an interrupted ``<file>.part`` continues with an HTTP
Range request), verified (SHA-256) and atomic (the final name appears only once
the digest matched). Archives are extracted with tarfile's ``data`` filter (no
absolute paths, no ``..``, no links out, no device files) into a temporary
folder that is swapped in whole.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from incept.errors import UserError
from incept.fsutil import atomic_directory, fsync_dir

CHUNK = 1 << 20
EXTRACTED_MARKER = ".extracted-from"


@dataclass(frozen=True)
class Artifact:
    name: str
    url: str
    filename: str
    sha256: str | None      # pinned digest, None where no published digest was found
    extract_dir: str


ARTIFACTS: dict[str, Artifact] = {
    "flowers": Artifact(
        "flowers", "http://download.tensorflow.org/example_images/flower_photos.tgz",
        "flower_photos.tgz",
        # As recorded by tensorflow_datasets (url_checksums/tf_flowers.txt, 228813984 bytes).
        "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c",
        "flower_photos"),
    "inception_v4": Artifact(
        "inception_v4", "http://download.tensorflow.org/models/inception_v4_2016_09_09.tar.gz",
        "inception_v4_2016_09_09.tar.gz",
        None,  # no published SHA-256 found: pass --sha256 to verify
        "inception_v4"),
}

Progress = Callable[[int, int | None], None]   # (bytes so far, total or None)


@dataclass
class DownloadResult:
    path: Path
    sha256: str
    verified: bool          # checked against a known digest
    resumed_from: int = 0   # bytes kept from an earlier interrupted download
    downloaded: bool = True  # False when the file was already there and matched


def _sha256_of(path: Path) -> str:
    return _file_hasher(path).hexdigest()


def _file_hasher(path: Path):
    """A SHA-256 hasher fed ``path``'s bytes (more may follow)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher


def _check_digest(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise UserError(f"--sha256 must be 64 hexadecimal digits, got {value!r}")
    return value


def fetch(url: str, dest: str | Path, sha256: str | None = None, *,
          progress: Progress | None = None, timeout: float = 60.0) -> DownloadResult:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if an earlier run was cut off."""
    dest = Path(dest)
    expected = _check_digest(sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        digest = _sha256_of(dest)
        if expected is None or digest == expected:
            return DownloadResult(dest, digest, expected is not None, downloaded=False)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    try:
        digest, resumed_from = _download_part(url, part, have, progress, timeout)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"download of {url} failed: {reason}"
                        + ("; run the command again to resume" if part.exists() else "")) from None
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise UserError(f"{url}: SHA-256 mismatch (expected {expected}, got {digest}); "
                        "the partial file was removed")
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return DownloadResult(dest, digest, expected is not None, resumed_from)


def _download_part(url: str, part: Path, have: int, progress: Progress | None,
                   timeout: float) -> tuple[str, int]:
    """(SHA-256 of the complete ``part``, bytes of it kept from an earlier run):
    with ``have`` bytes of it there, only the rest is asked for."""
    request = urllib.request.Request(url, headers={"User-Agent": "incept-download"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) only)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:   # the part is already complete
            return _sha256_of(part), 0
        raise
    with response:
        return _receive(response, part, have, progress, url)


def _receive(response, part: Path, have: int, progress: Progress | None,
             url: str) -> tuple[str, int]:
    """Write the response's body to ``part``: after its ``have`` bytes when the
    server sent the range asked for, else from the start."""
    if have and response.status == 206 and _range_start(response) == have:
        resumed_from, mode = have, "ab"
        hasher = _file_hasher(part)  # the digest is the whole file's: the kept bytes first
    else:
        resumed_from, have, mode = 0, 0, "wb"   # the server ignored the range: start over
        hasher = hashlib.sha256()
    total = _total_length(response, have)
    with open(part, mode) as out:
        got = have
        while chunk := response.read(CHUNK):
            out.write(chunk)
            hasher.update(chunk)
            got += len(chunk)
            if progress:
                progress(got, total)
        out.flush()
        os.fsync(out.fileno())
    if total is not None and got < total:
        raise UserError(f"download of {url} stopped at {got} of {total} bytes; "
                        "run the command again to resume")
    return hasher.hexdigest(), resumed_from


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _total_length(response, have: int) -> int | None:
    match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def extract(archive: str | Path, target: str | Path, archive_sha256: str | None = None) -> Path:
    """Extract a tar archive into the folder ``target`` atomically. When the
    archive holds one top folder named like ``target`` its content is lifted
    (``flower_photos.tgz`` -> ``target/daisy/...``). A target extracted from
    the same archive (digest) is left alone."""
    archive, target = Path(archive), Path(target)
    digest = archive_sha256 or _sha256_of(archive)
    marker = target / EXTRACTED_MARKER
    if marker.exists() and marker.read_text().strip() == digest:
        return target
    with atomic_directory(target) as tmp:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except tarfile.FilterError as e:
            raise UserError(f"refusing unsafe archive {archive.name}: {e}") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            raise UserError(f"cannot extract {archive.name}: {e}") from None
        entries = [p for p in tmp.iterdir()]
        if len(entries) == 1 and entries[0].is_dir() and entries[0].name == target.name:
            inner = entries[0]
            for child in inner.iterdir():
                os.rename(child, tmp / child.name)
            inner.rmdir()
        (tmp / EXTRACTED_MARKER).write_text(digest + "\n")
    return target


def download(name: str, out_dir: str | Path, *, url: str | None = None, sha256: str | None = None,
             do_extract: bool = True, progress: Progress | None = None) -> tuple[DownloadResult, Path | None]:
    """Fetch a known artifact into ``out_dir`` (and extract it into ``out_dir/<extract_dir>``)."""
    if name not in ARTIFACTS:
        raise UserError(f"unknown download {name!r}; choose one of {', '.join(ARTIFACTS)}")
    art = ARTIFACTS[name]
    out_dir = Path(out_dir)
    result = fetch(url or art.url, out_dir / art.filename, sha256 or art.sha256, progress=progress)
    target = extract(result.path, out_dir / art.extract_dir, result.sha256) if do_extract else None
    return result, target


def download_flowers(out_dir: str | Path, **kw) -> Path:
    """The flower_photos class folders (``out_dir/flower_photos``), downloaded if needed."""
    _, target = download("flowers", out_dir, **kw)
    assert target is not None
    return target


def download_inception_v4(out_dir: str | Path, **kw) -> Path:
    """The official Inception v4 checkpoint prefix (``out_dir/inception_v4/inception_v4.ckpt``)."""
    _, target = download("inception_v4", out_dir, **kw)
    assert target is not None
    prefix = target / "inception_v4.ckpt"
    if not prefix.exists():
        raise UserError(f"the archive did not contain inception_v4.ckpt (found: "
                        f"{', '.join(sorted(p.name for p in target.iterdir()))})")
    return prefix
