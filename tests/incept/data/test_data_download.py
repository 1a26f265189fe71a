"""incept.data.download against a real HTTP server on 127.0.0.1 that speaks
Range requests and can be told to cut a response short or ignore ranges."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from incept.cli import main as cli_main
from incept.data.convert import convert
from incept.data.download import download_inception_v4, extract, fetch
from incept.data.synthetic import write_class_folders
from incept.errors import UserError


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut_after: int | None = None     # send only this many body bytes, then close
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        self.server.requests.append((name, rng))
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and not self.server.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None:
            body = body[: self.server.cut_after]
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _flowers_archive(tmp_path: Path) -> bytes:
    src = tmp_path / "gen" / "flower_photos"
    write_class_folders(src, num_classes=2, per_class=4, size=(16, 16))
    (src / "LICENSE.txt").write_text("CC-BY")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="flower_photos")
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_verifies_and_is_a_no_op_when_present(tmp_path, server):
    data = bytes(range(256)) * 5000
    server.files["blob.bin"] = data
    result = fetch(server.url("blob.bin"), tmp_path / "blob.bin", _sha(data))
    assert result.verified and result.downloaded and result.sha256 == _sha(data)
    assert (tmp_path / "blob.bin").read_bytes() == data
    assert not (tmp_path / "blob.bin.part").exists()
    again = fetch(server.url("blob.bin"), tmp_path / "blob.bin", _sha(data))
    assert not again.downloaded and len(server.requests) == 1


def test_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    data = bytes(range(256)) * 9000
    server.files["blob.bin"] = data
    server.cut_after = 700_000
    with pytest.raises(UserError, match="resume"):
        fetch(server.url("blob.bin"), tmp_path / "blob.bin", _sha(data))
    assert not (tmp_path / "blob.bin").exists()
    assert (tmp_path / "blob.bin.part").stat().st_size == 700_000

    server.cut_after = None
    result = fetch(server.url("blob.bin"), tmp_path / "blob.bin", _sha(data))
    assert server.requests[-1] == ("blob.bin", "bytes=700000-")
    assert result.resumed_from == 700_000 and result.verified
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_server_without_range_support_restarts_cleanly(tmp_path, server):
    data = b"x" * 300_000 + b"y" * 300_000
    server.files["f"] = data
    (tmp_path / "f.part").write_bytes(b"junk" * 1000)
    server.ignore_range = True
    result = fetch(server.url("f"), tmp_path / "f", _sha(data))
    assert result.resumed_from == 0 and (tmp_path / "f").read_bytes() == data


def test_digest_mismatch_keeps_nothing(tmp_path, server):
    server.files["f"] = b"tampered"
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        fetch(server.url("f"), tmp_path / "f", "0" * 64)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="64 hexadecimal"):
        fetch(server.url("f"), tmp_path / "f", "abc")
    with pytest.raises(UserError, match="failed"):
        fetch(server.url("missing"), tmp_path / "g", None)


def test_unsafe_archives_are_refused(tmp_path):
    (tmp_path / "up.tgz").write_bytes(_tgz({"ok.txt": b"fine", "../evil.txt": b"x"}))
    with pytest.raises(UserError, match="unsafe"):
        extract(tmp_path / "up.tgz", tmp_path / "out" / "target")
    # An absolute member name lands inside the target, never at the absolute path.
    (tmp_path / "abs.tgz").write_bytes(_tgz({f"{tmp_path}/abs-evil.txt": b"x"}))
    inside = extract(tmp_path / "abs.tgz", tmp_path / "out" / "abs")
    assert not (tmp_path / "abs-evil.txt").exists()
    assert (inside / str(tmp_path).lstrip("/") / "abs-evil.txt").read_bytes() == b"x"
    shutil.rmtree(inside)
    link = io.BytesIO()
    with tarfile.open(fileobj=link, mode="w:gz") as tar:
        info = tarfile.TarInfo("escape")
        info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
        tar.addfile(info)
    (tmp_path / "link.tgz").write_bytes(link.getvalue())
    with pytest.raises(UserError, match="unsafe"):
        extract(tmp_path / "link.tgz", tmp_path / "out" / "target")
    (tmp_path / "broken.tgz").write_bytes(b"not a tarball")
    with pytest.raises(UserError, match="cannot extract"):
        extract(tmp_path / "broken.tgz", tmp_path / "out" / "target")
    assert not (tmp_path / "evil.txt").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_cli_downloads_extracts_and_the_result_converts(tmp_path, server, capsys):
    archive = _flowers_archive(tmp_path)
    server.files["flower_photos.tgz"] = archive
    argv = ["download", "flowers", "--out", str(tmp_path / "dl"),
            "--url", server.url("flower_photos.tgz"), "--sha256", _sha(archive)]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "downloaded" in out and _sha(archive) in out and "NOT verified" not in out
    photos = tmp_path / "dl" / "flower_photos"
    assert sorted(p.name for p in photos.iterdir() if not p.name.startswith(".")) == [
        "LICENSE.txt", "daisy", "dandelion"]
    report = convert(photos, tmp_path / "ds")
    assert report.written == 8 and report.stray_files == ["LICENSE.txt"]

    assert cli_main(argv) == 0
    assert "already present" in capsys.readouterr().out
    assert len(server.requests) == 1

    # The pinned digest of the real archive applies when no --sha256 is given.
    assert cli_main(["download", "flowers", "--out", str(tmp_path / "dl2"),
                     "--url", server.url("flower_photos.tgz")]) == 2
    err = capsys.readouterr().err
    assert "SHA-256 mismatch" in err and "Traceback" not in err


def test_cli_checkpoint_without_digest_says_it_is_unverified(tmp_path, server, capsys):
    server.files["ckpt.tgz"] = _tgz({"inception_v4.ckpt": b"\0" * 1000})
    assert cli_main(["download", "inception_v4", "--out", str(tmp_path),
                     "--url", server.url("ckpt.tgz")]) == 0
    out = capsys.readouterr().out
    assert "NOT verified" in out
    assert (tmp_path / "inception_v4" / "inception_v4.ckpt").read_bytes() == b"\0" * 1000

    assert download_inception_v4(tmp_path, url=server.url("ckpt.tgz")) == \
        tmp_path / "inception_v4" / "inception_v4.ckpt"
    server.files["empty.tgz"] = _tgz({"README": b"no checkpoint here"})
    with pytest.raises(UserError, match="did not contain"):
        download_inception_v4(tmp_path / "other", url=server.url("empty.tgz"))
