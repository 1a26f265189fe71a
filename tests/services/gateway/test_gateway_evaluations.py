"""GET /v1/jobs/{id}/evaluations/{step}/images and /v1/jobs/{id}/thumbnails/{key}.jpg:
the evaluator's per-image results filtered and sorted, and the dataset's thumbnails."""

from __future__ import annotations

from incept.fsutil import write_json_atomic
from incept.layout import thumbnail_file, thumbnail_key
from tests.services.gateway.conftest import encode

JOB = "flowers-20260101-000000-abcdef"


def _results(layout) -> None:
    import numpy as np

    run = layout.run(JOB)
    write_json_atomic(run.spec, {"dataset": "flowers", "model_name": "tiny", "max_steps": 20})
    images = []
    for n, (label, predicted) in enumerate([(0, 0), (0, 1), (1, 1), (1, 0), (1, 0)]):
        rel = f"c{label}/{n}.jpg"
        images.append({"file": rel, "thumbnail": thumbnail_key(rel), "label": label,
                       "predicted": predicted, "score": 0.7, "loss": float(n), "ood_score": 10.0 - n})
    write_json_atomic(run.eval_images(10), {"job_id": JOB, "step": 10, "images": images})
    thumb = thumbnail_file(layout.dataset("flowers"), thumbnail_key("c0/1.jpg"))
    thumb.parent.mkdir(parents=True)
    thumb.write_bytes(encode(np.zeros((8, 8, 3), np.uint8)))


def test_per_image_results_filtered_and_sorted(client, auth, layout):
    _results(layout)
    url = f"/v1/jobs/{JOB}/evaluations/10/images"
    assert client.get(url).status_code == 401
    body = client.get(url, headers=auth).json()
    assert body["matched"] == 5 and [i["loss"] for i in body["images"]] == [4, 3, 2, 1, 0]
    wrong = client.get(url, params={"wrong": True}, headers=auth).json()
    assert [i["file"] for i in wrong["images"]] == ["c1/4.jpg", "c1/3.jpg", "c0/1.jpg"]
    cell = client.get(url, params={"true": 1, "predicted": 0, "limit": 1}, headers=auth).json()
    assert cell["matched"] == 2 and [i["file"] for i in cell["images"]] == ["c1/4.jpg"]
    unusual = client.get(url, params={"sort": "ood"}, headers=auth).json()
    assert [i["ood_score"] for i in unusual["images"]] == [10, 9, 8, 7, 6]
    assert client.get(f"/v1/jobs/{JOB}/evaluations/5/images", headers=auth).status_code == 404
    assert client.get(url, params={"sort": "name"}, headers=auth).status_code == 422


def test_thumbnails_come_from_the_jobs_dataset_only(client, auth, layout):
    _results(layout)
    r = client.get(f"/v1/jobs/{JOB}/thumbnails/{thumbnail_key('c0/1.jpg')}.jpg", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content[:2] == b"\xff\xd8"
    for key in (thumbnail_key("c0/2.jpg"), "..%2F..%2Fspec", "0" * 19, "G" * 20):
        assert client.get(f"/v1/jobs/{JOB}/thumbnails/{key}.jpg", headers=auth).status_code == 404
    assert client.get(f"/v1/jobs/nope/thumbnails/{thumbnail_key('c0/1.jpg')}.jpg",
                      headers=auth).status_code == 404
