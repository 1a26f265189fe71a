"""Shared set-up for the trainer tests: a converted synthetic dataset and a run."""

from __future__ import annotations

import json

TINY_HEADS = ["TinyNet/Logits", "TinyNet/AuxLogits/Aux_logits"]


def make_dataset(layout, name="shapes", per_class=24, num_classes=3, seed=0):
    from incept.data.convert import convert
    from incept.data.synthetic import write_class_folders

    src = layout.root / "src" / name
    write_class_folders(src, num_classes=num_classes, per_class=per_class, size=(40, 40), seed=seed)
    convert(src, layout.dataset(name), validation_percent=25, seed=0)
    return name


def make_run(layout, job_id, **spec_fields):
    from incept.fsutil import write_json_atomic
    from incept.spec import parse_spec

    fields = {"dataset": "shapes", "model_name": "tiny", "image_size": 32, "batch_size": 8,
              "learning_rate": 0.01, "max_steps": 40, "checkpoint_every_seconds": None,
              "checkpoint_every_steps": 20, "seed": 1}
    fields.update(spec_fields)
    spec = parse_spec(fields)
    run = layout.run(job_id)
    run.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.spec, json.loads(spec.model_dump_json()))
    return run, spec


def validation_accuracy(layout, run, step=None):
    import numpy as np

    from incept.checkpoints import restore_for_inference
    from incept.data.dataset import make_dataset as batches

    restored = restore_for_inference(run, step=step, layout=layout)
    ds = batches(layout.dataset("shapes"), "validation", restored.spec.resolved_image_size(), 32,
                 training=False)
    correct = total = 0
    for images, labels in ds:
        pred = np.argmax(restored.model(images, training=False)["logits"].numpy(), axis=-1)
        correct += int((pred == labels.numpy()).sum())
        total += len(pred)
    return correct / total, restored
