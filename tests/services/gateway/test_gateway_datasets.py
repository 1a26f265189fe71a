"""The dataset routes (routes/datasets.py): upload, conversion by a queued job,
list, inspect, bad archives (real Redis, a real rq worker)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from incept.queues import connect, conversion_request_id, fetch_request
from tests.services.gateway.conftest import SPEC


def _zip_of_class_folders(tmp_path: Path) -> bytes:
    from incept.data.synthetic import write_class_folders

    src = tmp_path / "src" / "photos"
    write_class_folders(src, num_classes=2, per_class=6, size=(32, 32))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src.parent).as_posix())
    return buf.getvalue()


def test_dataset_upload_is_converted_by_a_queued_job(client, auth, layout, redis_url, tmp_path):
    archive = _zip_of_class_folders(tmp_path)
    r = client.post("/v1/datasets?name=shapes", content=archive,
                    headers={**auth, "Content-Type": "application/zip"})
    assert r.status_code == 202, r.text
    assert r.json()["files"] == 12 and r.json()["state"] == "converting"
    assert client.get("/v1/datasets/shapes", headers=auth).json()["state"] == "converting"
    job = fetch_request(connect(redis_url), conversion_request_id("shapes"))
    name, source = job.args
    assert name == "shapes" and Path(source).parent.parent == layout.uploads
    assert sorted(p.name for p in Path(source).iterdir()) == ["daisy", "dandelion"]
    # The client's file name is never used: only random names under uploads/.
    assert not list(layout.uploads.glob("*.archive"))
    r = client.post("/v1/jobs", json={**SPEC, "dataset": "shapes"}, headers=auth)
    assert r.status_code == 409 and "still being converted" in r.text
    # A real rq worker converts it.
    env = {**os.environ, "INCEPT_DATA_ROOT": str(layout.root), "INCEPT_REDIS_URL": redis_url}
    subprocess.run([sys.executable, "-m", "rq.cli", "worker", "--burst", "-u", redis_url,
                    "--serializer", "rq.serializers.JSONSerializer", "datasets"],
                   env=env, check=True, capture_output=True, timeout=300, cwd=Path(__file__).parents[3])
    d = client.get("/v1/datasets/shapes", headers=auth).json()
    assert d["state"] == "ready", d
    assert client.post("/v1/jobs", json={**SPEC, "dataset": "shapes"}, headers=auth).status_code == 202
    assert d["class_names"] == ["daisy", "dandelion"]
    assert [x["name"] for x in client.get("/v1/datasets", headers=auth).json()["datasets"]] == ["shapes"]
    r = client.post("/v1/datasets?name=shapes", content=archive,
                    headers={**auth, "Content-Type": "application/zip"})
    assert r.status_code == 409


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name, kind=tarfile.REGTYPE, size=0, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


def test_dataset_upload_bad_input(make_gateway, auth, layout):
    import httpx

    gw = make_gateway(max_upload_bytes=50_000, max_archive_files=5)
    zip_slip = io.BytesIO()
    with zipfile.ZipFile(zip_slip, "w") as zf:
        zf.writestr("a/x.jpg", b"1")
        zf.writestr("../../evil.txt", b"2")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.jpg", b"\0" * 5_000_000)
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(6):
            zf.writestr(f"a/{i}.jpg", b"1")
    cases = [
        ("zip", zip_slip.getvalue(), 400, "outside the archive"),
        ("gzip", _tar([(_info("a/x.jpg", size=1), b"1"), (_info("a/l", tarfile.SYMTYPE, link="/etc/passwd"), None)]), 400, "link"),
        ("gzip", _tar([(_info("a/x.jpg", size=1), b"1"), (_info("a/h", tarfile.LNKTYPE, link="a/x.jpg"), None)]), 400, "link"),
        ("gzip", _tar([(_info("a/dev", tarfile.CHRTYPE), None)]), 400, "special file"),
        ("gzip", _tar([(_info("/abs/x.jpg", size=1), b"1")]), 400, "absolute path"),
        ("zip", bomb.getvalue(), 400, "compression ratio"),
        ("zip", many.getvalue(), 400, "has 6 entries; the limit is 5"),
        ("zip", b"PK\x03\x04 not really a zip", 400, "not a zip or tar"),
        ("zip", b"", 400, "empty"),
        ("zip", b"x" * 60_000, 413, "larger than 50000"),
    ]
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        for kind, body, status, text in cases:
            r = c.post("/v1/datasets?name=bad", content=body,
                       headers={**auth, "Content-Type": f"application/{kind}"})
            assert r.status_code == status, (text, r.text)
            assert text in r.text, r.text
        r = c.post("/v1/datasets?name=bad", content=b"x", headers={**auth, "Content-Type": "text/plain"})
        assert r.status_code == 415
        for name in ("../x", ".hidden", "a" * 65):
            r = c.post("/v1/datasets", params={"name": name}, content=b"x",
                       headers={**auth, "Content-Type": "application/zip"})
            assert r.status_code in (400, 422), (name, r.text)
        assert c.post("/v1/datasets", content=b"x", headers={**auth, "Content-Type": "application/zip"}).status_code == 422
        assert c.get("/v1/datasets/nosuch", headers=auth).status_code == 404
    # Nothing is left behind, nothing escaped.
    assert list(layout.uploads.iterdir()) == []
    assert not (layout.root.parent / "evil.txt").exists()
    assert list(layout.datasets.iterdir()) == []
