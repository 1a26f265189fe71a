"""Hostile job specs sent to a real gateway (uvicorn, real Redis): unbounded
resources and base checkpoints outside the data root get a 422 naming the
problem, write nothing, and tell nothing about files outside the data root."""

from __future__ import annotations

import httpx
import pytest

from incept.fsutil import write_json_atomic
from tests.services.gateway.conftest import (  # noqa: F401 (fixtures)
    TOKEN,
    exported_models,
    make_gateway,
)

SPEC = {"dataset": "big", "model_name": "tiny", "max_steps": 5, "batch_size": 4}
TRAINER_MEMORY = 1 << 30


@pytest.fixture
def big_dataset(layout):
    """A converted dataset's description with 100 000 training images."""
    d = layout.dataset("big")
    d.mkdir(parents=True)
    write_json_atomic(d / "dataset.json", {
        "class_names": ["a", "b"], "counts": {"train": 100_000, "validation": 1000},
        "fingerprint": "f" * 16, "shards": {}})
    return d


@pytest.fixture
def client(make_gateway, big_dataset):  # noqa: F811
    gw = make_gateway(trainer_memory_bytes=TRAINER_MEMORY)
    with httpx.Client(base_url=gw.url, timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


@pytest.mark.parametrize("fields,expected", [
    ({"batch_size": 4096, "image_size": 1024}, "one float32 input batch is 48.0 GiB"),
    ({"batch_size": 256, "image_size": 512}, "more than the trainer's 1.0 GiB of memory"),
    ({"max_steps": 10**12}, "max_steps: Input should be less than or equal to 10000000"),
    ({"max_steps": None, "epochs": 1e9}, "epochs: Input should be less than or equal to 100000"),
    ({"max_steps": None, "epochs": 50_000, "batch_size": 1}, "is 5000000000 steps, more than"),
    ({"keep_checkpoints": 10**6}, "keep_checkpoints: Input should be less than or equal to 1000"),
    ({"augmented_views": 64, "trainable_scopes": ["TinyNet/Logits"]},
     "augmented_views: 64 x 100000 images: the feature cache needs up to"),
])
def test_unbounded_resources_are_refused_at_submit(client, layout, fields, expected):
    r = client.post("/v1/jobs", json={**SPEC, **fields})
    assert r.status_code == 422, r.text
    assert any(expected in p for p in r.json()["problems"]), r.json()
    assert list(layout.runs.iterdir()) == []


def test_base_checkpoint_is_confined_to_the_data_root(client, layout, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.ckpt.index").write_bytes(b"")
    (layout.pretrained / "inception").mkdir()
    (layout.pretrained / "inception" / "v4.ckpt.index").symlink_to(outside / "model.ckpt.index")
    up = "../" * len(layout.root.relative_to(tmp_path).parts)
    hostile = ["/etc/hostname", "/no/such/file", str(outside / "model.ckpt"),
               f"{up}outside/model.ckpt", "pretrained/../../outside/model.ckpt",
               "inception/v4.ckpt"]
    answers = []
    for value in hostile:
        r = client.post("/v1/jobs", json={**SPEC, "checkpoint": value})
        assert r.status_code == 422, (value, r.text)
        answers.append([p.replace(repr(value), "PATH") for p in r.json()["problems"]])
    # The same words whether the file exists, is missing, or is reached through '..'.
    assert answers[0] == ["checkpoint: checkpoint PATH is not inside the data root"]
    assert all(a == answers[0] for a in answers), answers
    assert list(layout.runs.iterdir()) == []
    for value in ["pretrained/inception_v4/inception_v4.ckpt", "inception_v4/inception_v4.ckpt",
                  str(layout.pretrained / "x.ckpt")]:
        assert client.post("/v1/jobs", json={**SPEC, "checkpoint": value}).status_code == 202


def test_an_allow_listed_checkpoint_root(make_gateway, big_dataset, tmp_path):  # noqa: F811
    shared = tmp_path / "shared-weights"
    shared.mkdir()
    gw = make_gateway(checkpoint_roots=[shared])
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        assert c.post("/v1/jobs", json={**SPEC, "checkpoint": str(shared / "v4.ckpt")}).status_code == 202
        r = c.post("/v1/jobs", json={**SPEC, "checkpoint": str(tmp_path / "v4.ckpt")})
        assert r.status_code == 422 and "allowed checkpoint roots" in r.text
