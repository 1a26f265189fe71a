"""Dataset uploads (issue 14 items 2, 3, 4): archive entry floods, uploads that
outlive their conversion, too many at once, and two of one name at once."""

from __future__ import annotations

import io
import tarfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from tests.security.conftest import AUTH, encode, peak_rss_mb


def _dirs_zip(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            zf.writestr(f"a/d{i}/", b"")
        zf.writestr("a/1.jpg", b"x")
    return buf.getvalue()


def _dirs_tar(n: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(n):
            info = tarfile.TarInfo(f"a/d{i}/")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        info = tarfile.TarInfo("a/1.jpg")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def _photos_tar(classes: int = 2, per_class: int = 4) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for c in range(classes):
            for i in range(per_class):
                data = encode(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
                info = tarfile.TarInfo(f"photos/class{c}/{i}.jpg")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _upload(http, name: str, body, kind: str = "application/gzip") -> httpx.Response:
    return http.post("/v1/datasets", params={"name": name}, content=body,
                     headers={"Content-Type": kind})


def test_entry_floods_are_refused_with_nothing_left_behind(system, http):
    big_zip, big_tar = _dirs_zip(20_000), _dirs_tar(5_000)
    rss = peak_rss_mb(system.gateway.pid)
    r = _upload(http, "zipflood", big_zip, "application/zip")
    assert r.status_code == 400 and "entries" in r.json()["detail"], r.text
    r = _upload(http, "tarflood", big_tar)
    assert r.status_code == 400 and "more than 200 entries" in r.json()["detail"], r.text
    assert peak_rss_mb(system.gateway.pid) - rss < 50
    assert system.uploads_left() == []
    assert http.get("/v1/datasets/zipflood").status_code == 404


def _wait_ready(http, name: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = http.get(f"/v1/datasets/{name}").json()
        if info.get("state") in ("ready", "failed"):
            return info
        time.sleep(0.5)
    raise AssertionError(f"dataset {name} still {info}")


def test_a_converted_upload_leaves_nothing_in_uploads(system, http):
    r = _upload(http, "photos", _photos_tar())
    assert r.status_code == 202, r.text
    assert _wait_ready(http, "photos")["state"] == "ready"
    assert system.uploads_left() == []


class SlowBody:
    """A request body that sends its first bytes, then waits to be released."""

    def __init__(self, data: bytes):
        self.data = data
        self.started = threading.Event()
        self.release = threading.Event()

    def __iter__(self):
        yield self.data[:1024]
        self.started.set()
        self.release.wait(120)
        yield self.data[1024:]


def _slow_upload(system, name: str, body: SlowBody, pool) -> object:
    def send():
        with system.client(headers=AUTH) as c:
            return _upload(c, name, body)
    future = pool.submit(send)
    assert body.started.wait(60)
    return future


def test_of_two_uploads_of_one_name_exactly_one_wins(system, http):
    first = SlowBody(_photos_tar())
    with ThreadPoolExecutor(2) as pool:
        receiving = _slow_upload(system, "twins", first, pool)
        time.sleep(0.5)  # the first one is inside the route, reading its body
        second = _upload(http, "twins", _photos_tar())
        first.release.set()
        assert second.status_code == 409, second.text
        assert receiving.result().status_code == 202
    assert _wait_ready(http, "twins")["state"] == "ready"
    assert _upload(http, "twins", _photos_tar()).status_code == 409  # it exists now
    assert system.uploads_left() == []


def test_uploads_beyond_the_cap_wait_outside(system, http):
    bodies = [SlowBody(_photos_tar()) for _ in range(2)]  # the cap is 2
    with ThreadPoolExecutor(2) as pool:
        futures = [_slow_upload(system, f"busy{i}", b, pool) for i, b in enumerate(bodies)]
        time.sleep(0.5)
        third = _upload(http, "busy2", _photos_tar())
        for b in bodies:
            b.release.set()
        assert third.status_code == 429 and third.headers["retry-after"], third.text
        assert [f.result().status_code for f in futures] == [202, 202]
    for i in range(2):
        assert _wait_ready(http, f"busy{i}")["state"] == "ready"
    assert system.uploads_left() == []
