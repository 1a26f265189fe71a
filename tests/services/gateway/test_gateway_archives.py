"""Safe archive extraction, on real zip and tar files."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest

from services.gateway.archives import ArchiveError, Limits, extract_archive


def _zip(tmp_path, entries: dict[str, bytes], *, symlink: str | None = None):
    path = tmp_path / "upload.bin"  # the name says nothing: the format is sniffed
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def _tar(tmp_path, members, mode="w:gz"):
    path = tmp_path / "upload.bin"
    with tarfile.open(path, mode) as tf:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data or b"")
            tf.addfile(info, io.BytesIO(data) if data else None)
    return path


def test_wrapped_class_folders_are_found(tmp_path):
    archive = _tar(tmp_path, [("flower_photos/", tarfile.DIRTYPE, None),
                              ("flower_photos/daisy/1.jpg", tarfile.REGTYPE, b"a"),
                              ("flower_photos/roses/2.jpg", tarfile.REGTYPE, b"bb")], mode="w:bz2")
    report = extract_archive(archive, tmp_path / "out")
    assert report.files == 2 and report.unpacked_bytes == 3
    assert report.root == (tmp_path / "out" / "flower_photos").resolve()
    assert (report.root / "roses" / "2.jpg").read_bytes() == b"bb"


@pytest.mark.parametrize("make, message", [
    (lambda t: _zip(t, {"a/1.jpg": b"x"}, symlink="a/link"), "links and special files"),
    (lambda t: _zip(t, {"a/1.jpg": b"x", "a/../../x": b"y"}), "outside the archive"),
    (lambda t: _zip(t, {"C:/windows/x": b"y"}), "absolute path"),
    (lambda t: _tar(t, [("a/fifo", tarfile.FIFOTYPE, None)]), "special file"),
    (lambda t: _tar(t, [("a/dev", tarfile.BLKTYPE, None)]), "special file"),
    (lambda t: _tar(t, [("a/../../../x", tarfile.REGTYPE, b"x")]), "outside the archive"),
    (lambda t: _tar(t, [("top.jpg", tarfile.REGTYPE, b"x")]), "no class folders"),
    (lambda t: _tar(t, [("a/", tarfile.DIRTYPE, None)]), "no files"),
])
def test_unsafe_or_unusable_archives_are_refused(tmp_path, make, message):
    with pytest.raises(ArchiveError, match=message):
        extract_archive(make(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "x").exists()


def test_limits_count_written_bytes(tmp_path):
    archive = _zip(tmp_path, {f"{c}/{i}.jpg": bytes(1000) for i, c in enumerate("aab")})
    with pytest.raises(ArchiveError, match="more than 2000 bytes"):
        extract_archive(archive, tmp_path / "out", Limits(max_unpacked_bytes=2000, max_ratio=1e9))
    with pytest.raises(ArchiveError, match="compression ratio"):
        extract_archive(archive, tmp_path / "out2", Limits(max_ratio=2))
    assert extract_archive(archive, tmp_path / "ok").files == 3


def test_damaged_archives(tmp_path):
    good = _zip(tmp_path, {"a/1.jpg": bytes(5000)})
    data = bytearray(good.read_bytes())
    data[60:200] = b"\xff" * 140  # corrupt the deflated member
    broken = tmp_path / "broken.bin"
    broken.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        extract_archive(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world")
    with pytest.raises(ArchiveError, match="not a zip or tar"):
        extract_archive(junk, tmp_path / "out")


def _many_dirs_zip(tmp_path, n: int):
    path = tmp_path / "dirs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            zf.writestr(f"a/d{i}/", b"")
        zf.writestr("a/1.jpg", b"x")
    return path


def test_folders_count_as_entries(tmp_path):
    with pytest.raises(ArchiveError, match="has 51 entries; the limit is 10"):
        extract_archive(_many_dirs_zip(tmp_path, 50), tmp_path / "out", Limits(max_files=10))
    tar = _tar(tmp_path, [(f"a/d{i}/", tarfile.DIRTYPE, None) for i in range(50)]
               + [("a/1.jpg", tarfile.REGTYPE, b"x")])
    with pytest.raises(ArchiveError, match="more than 10 entries"):
        extract_archive(tar, tmp_path / "out", Limits(max_files=10))
    assert not (tmp_path / "out").exists()


def _set_eocd_entries(path, count: int) -> None:
    data = bytearray(path.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    data[eocd + 8:eocd + 12] = count.to_bytes(2, "little") * 2
    path.write_bytes(bytes(data))


def test_a_zip_is_counted_before_its_central_directory_is_read(tmp_path, monkeypatch):
    """The end record's count refuses a flood before zipfile builds anything, and a
    record that lies about it is caught by counting the headers themselves."""
    built = []
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents",
                        lambda self: built.append(self) or pytest.fail("directory read"))
    claims_many = _many_dirs_zip(tmp_path, 50)
    _set_eocd_entries(claims_many, 65000)
    with pytest.raises(ArchiveError, match="has 65000 entries"):
        extract_archive(claims_many, tmp_path / "out", Limits(max_files=100))
    lies = _many_dirs_zip(tmp_path, 50)
    _set_eocd_entries(lies, 3)
    with pytest.raises(ArchiveError, match="more than 10 entries"):
        extract_archive(lies, tmp_path / "out", Limits(max_files=10))
    assert not built


def test_zip64_end_records_are_read(tmp_path):
    path = tmp_path / "z64.zip"
    with zipfile.ZipFile(path, "w") as zf:  # over 65535 entries: Zip64 end records
        for i in range(65_600):
            zf.writestr(f"a/{i}", b"")
    with pytest.raises(ArchiveError, match="has 65600 entries; the limit is 65599"):
        extract_archive(path, tmp_path / "out", Limits(max_files=65_599))


def test_a_tar_is_read_without_keeping_its_members(tmp_path, monkeypatch):
    """tarfile appends every member it reads to ``members``: a tar of millions of
    entries would be a list of millions of TarInfo objects."""
    kept = []
    real_next = tarfile.TarFile.next

    def next_member(self):
        kept.append(len(self.members))
        return real_next(self)

    monkeypatch.setattr(tarfile.TarFile, "next", next_member)
    tar = _tar(tmp_path, [(f"a/d{i}/", tarfile.DIRTYPE, None) for i in range(2000)]
               + [("a/1.jpg", tarfile.REGTYPE, b"x")], mode="w")
    assert extract_archive(tar, tmp_path / "out", Limits(max_files=5000)).files == 1
    assert len(kept) > 2000 and max(kept) <= 1
