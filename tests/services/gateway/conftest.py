"""Fixtures for the gateway tests: tiny-net SavedModels exported with
incept.export (real TensorFlow), sample images, and the app served by uvicorn
on a free 127.0.0.1 port with a real Redis."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from incept.fsutil import write_json_atomic

TOKEN = "test-token-0123456789"
CLASSES = ["daisy", "roses", "tulips"]


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory):
    """models/flowers (open-set threshold that never fires) and models/strict
    (a threshold every image is above: always 'not one of the known classes')."""
    import keras

    from incept import nets
    from incept.evaluation.open_set import OpenSetScore
    from incept.export import export_model

    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    model = nets.build("tiny", num_classes=len(CLASSES), image_size=32)
    for name, threshold in (("flowers", 0.0), ("strict", -1.0)):
        ood = OpenSetScore("max_softmax", num_classes=len(CLASSES))
        ood(np.zeros((1, len(CLASSES)), "float32"), np.zeros((1, 32), "float32"))  # build it
        ood.threshold.assign(threshold)
        export_model(model, CLASSES, root / name, image_size=32, ood=ood)
    return root


def encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    from incept.data.synthetic import class_image

    rng = np.random.default_rng(0)
    out = [encode(class_image(i, 3, (48, 40), rng)) for i in range(3)]
    out.append(encode(class_image(1, 3, (40, 40), rng), "PNG"))
    return out


def save_checkpoint(layout, job_id: str, step: int) -> None:
    """A real (small) TensorFlow checkpoint where the trainer saves ``step``."""
    import tensorflow as tf

    from incept.checkpoints import checkpoint_prefix

    tf.train.Checkpoint(step=tf.Variable(step, dtype=tf.int64)).write(
        str(checkpoint_prefix(layout.run(job_id), step)))


@pytest.fixture
def make_gateway(layout, redis_url, exported_models) -> Callable:
    """Start the gateway (uvicorn, real port) with settings overrides; stopped after the test."""
    from incept.settings import Settings
    from services.gateway.app import create_app
    from tests.fakes.gateway_server import ServedApp

    started = []

    def start(with_models: bool = True, **overrides):
        if with_models and not any(layout.models.iterdir()):
            for d in exported_models.iterdir():
                shutil.copytree(d, layout.models / d.name)
        values = {"data_root": layout.root, "redis_url": redis_url, "api_tokens": [TOKEN], **overrides}
        settings = Settings(_env_file=None, **values)
        server = ServedApp(create_app(settings)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def gateway(make_gateway):
    return make_gateway()


@pytest.fixture
def client(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


@pytest.fixture
def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


SPEC = {"dataset": "flowers", "model_name": "tiny", "max_steps": 5, "batch_size": 4}


def finished_job(layout, job_id="flowers-20260101-000000-abcdef"):
    """A job that ran to the end, as the volume keeps it (no Redis needed)."""
    run = layout.run(job_id)
    write_json_atomic(run.spec, {**SPEC})
    write_json_atomic(run.status, {"state": "succeeded", "step": 5, "loss": 0.5})
    for step, acc in ((2, 0.5), (4, 0.9), (5, 0.8)):
        write_json_atomic(run.eval_result(step), {
            "job_id": job_id, "step": step, "accuracy": acc, "recall_at_5": 1.0, "loss": 1 - acc,
            "num_images": 10, "class_names": ["a", "b"], "confusion_matrix": [[5, 0], [1, 4]],
            "exported_version": 1 if step == 4 else None, "blessed": step == 4})
    return job_id
