"""Export a trained model as a SavedModel that TensorFlow Serving can load.

Layout: ``<model_base>/<version>/`` with integer versions (TF Serving ignores
other names), each holding the SavedModel plus ``manifest.json`` and
``labels.txt``. A version is built in a hidden temporary folder beside the
target, fsynced, then renamed into place, so TF Serving (which polls the base
folder) never sees a half-written version. The rename is also how concurrent
exporters agree on version numbers: renaming onto an existing (non-empty)
version fails, and the loser takes the next number.

Signature ``serving_default``:
    images        tf.string [None]      encoded JPEG/PNG bytes
 -> probabilities float32   [N, C]
    classes       int32     [N, k]      k = min(5, C), best first
    labels        string    [N, k]
    scores        float32   [N, k]
    ood_score     float32   [N]         higher = less like any known class
    is_unknown    bool      [N]         ood_score above the calibrated threshold

The images are decoded and preprocessed in the graph with exactly the
evaluation preprocessing (``incept.preprocessing.decode_and_preprocess_for_eval``),
so serving and evaluation cannot drift apart.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from incept import __version__
from incept.fsutil import atomic_directory, fsync_dir
from incept.layout import list_versions, pinned_version

if TYPE_CHECKING:
    from incept.spec import JobSpec

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
TOP_K = 5
MANIFEST = "manifest.json"
LABELS = "labels.txt"
GRAPH = "saved_model.pb"


@dataclass(frozen=True)
class ExportResult:
    version: int
    path: Path
    # Seconds spent: "trace" (building the serving function; 0 when a kept
    # archive was reused), "save" (writing the SavedModel), "fsync", "total".
    seconds: dict[str, float] = field(default_factory=dict)


def top_k(num_classes: int) -> int:
    return min(TOP_K, num_classes)


def serving_outputs(model: keras.Model, pixels: tf.Tensor, class_names: Sequence[str],
                    ood: Any = None) -> dict[str, tf.Tensor]:
    """The signature's outputs for preprocessed ``pixels`` (also used in-process)."""
    out = model(pixels, training=False)
    logits = tf.cast(out["logits"], tf.float32)
    probabilities = tf.nn.softmax(logits, axis=-1)
    scores, classes = tf.math.top_k(probabilities, k=top_k(len(class_names)))
    labels = tf.gather(tf.constant(list(class_names), dtype=tf.string), classes)
    if ood is None:
        # No calibrated score: keep the signature stable, never call anything unknown.
        ood_score = tf.zeros_like(probabilities[:, 0])
        is_unknown = tf.zeros_like(ood_score, dtype=tf.bool)
    else:
        ood_score = tf.cast(ood(logits, out["pre_logits"]), tf.float32)
        is_unknown = ood.is_unknown(ood_score)
    return {
        "probabilities": probabilities,
        "classes": tf.cast(classes, tf.int32),
        "labels": labels,
        "scores": scores,
        "ood_score": ood_score,
        "is_unknown": is_unknown,
    }


class ServingArchive:
    """One model's serving function, traced once, and the SavedModel graph
    written from it once.

    A version is the graph plus the values its variables hold when it is
    written. The first write is a full ``tf.saved_model.save``; every later
    one (or every one, after ``write_graph``) copies that graph and writes
    only a checkpoint of the variables (``tf.train.Checkpoint.write`` of the
    same root object, so under the very keys the graph's restore op -- what
    TF Serving runs -- reads). The versions of one head-only job differ only
    in their heads and open-set statistics: ~1 s each for Inception v4
    instead of re-serializing ~20k graph nodes.
    """

    def __init__(self, serve: Any, input_signature: Sequence[tf.TensorSpec]):
        self._root = tf.Module()
        # Saved as the signature only: a tf.function tracked on the root would be
        # saved once more for Python callers (the graph twice, loading ~20 % slower).
        self._signature = tf.function(serve, input_signature=input_signature,
                                      autograph=False).get_concrete_function()
        # Tracked so the SavedModel holds exactly the variables the trace reads, each
        # once (keras.export.ExportArchive also tracks the Keras wrapper of each:
        # every weight written twice).
        self._root.served_variables = list(self._signature.variables)
        self._variables = tf.train.Checkpoint(self._root)  # one saver for every version
        self._graph: bytes | None = None

    def write_graph(self) -> None:
        """Pay for the full save now (to a scratch folder), so that every
        version written afterwards is a checkpoint write."""
        if self._graph is None:
            with tempfile.TemporaryDirectory(prefix="incept-graph-") as scratch:
                self._save(Path(scratch) / "model")

    def write(self, path: Path) -> None:
        """A complete SavedModel of the current variable values in ``path``."""
        if self._graph is None:
            self._save(path)
            return
        (path / "assets").mkdir(parents=True, exist_ok=True)
        (path / GRAPH).write_bytes(self._graph)
        self._variables.write(str(path / "variables" / "variables"))

    def _save(self, path: Path) -> None:
        tf.saved_model.save(self._root, str(path), signatures={SIGNATURE: self._signature})
        self._graph = (path / GRAPH).read_bytes()


def build_archive(model: keras.Model, class_names: Sequence[str], *, image_size: int,
                  ood: Any = None) -> ServingArchive:
    from incept.preprocessing import decode_and_preprocess_batch_for_eval

    size = int(image_size)

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = decode_and_preprocess_batch_for_eval(images, size)
        return serving_outputs(model, pixels, class_names, ood)

    return ServingArchive(serve, [tf.TensorSpec([None], tf.string, name="images")])


MANIFEST_METRICS = ("accuracy", "recall_at_5", "loss", "ece", "num_images")


def build_manifest(model_name: str, job_id: str, step: int, spec: JobSpec, *, ema: bool,
                   dataset_fingerprint: str | None = None, metrics: dict[str, Any] | None = None,
                   ood_calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a version's manifest says of where it came from (the evaluator's
    exports and ``incept export`` alike); ``export_model`` adds the serving facts."""
    manifest = {"model_name": model_name, "job_id": job_id, "step": int(step),
                "net": spec.model_name, "dataset": spec.dataset, "ema": ema}
    if metrics is not None:
        manifest.update(dataset_fingerprint=dataset_fingerprint, ood_calibration=ood_calibration,
                        metrics={k: metrics[k] for k in MANIFEST_METRICS})
    return manifest


def export_model(model: keras.Model, class_names: Sequence[str], model_base: Path, *,
                 image_size: int, ood: Any = None, manifest: dict[str, Any] | None = None,
                 version: int | None = None, keep: int | None = None,
                 archive: ServingArchive | None = None) -> ExportResult:
    """Write a new version of the SavedModel under ``model_base`` atomically.

    ``version=None`` takes the next free integer (racing exporters each get their
    own); an explicit ``version`` that already exists is an error. ``keep`` removes
    all but the newest ``keep`` versions afterwards. ``archive``: one that
    ``build_archive`` made for this very ``model`` and ``ood`` object (whose
    weights may have changed since): the versions of one job reuse its traced
    serving function and its written graph (``ServingArchive``). The result says
    what the export cost (``ExportResult.seconds``).
    """
    class_names = [str(c) for c in class_names]
    if not class_names:
        raise ValueError("export needs at least one class name")
    model_base = Path(model_base)
    info = {
        **(manifest or {}),
        "class_names": class_names,
        "image_size": int(image_size),
        "signature": SIGNATURE,
        "top_k": top_k(len(class_names)),
        "ood": ood.describe() if ood is not None else None,
    }
    chosen = 0
    marks = [time.perf_counter()]

    def publish(tmp: Path) -> None:  # into the next free version (or the one asked for)
        nonlocal chosen
        chosen = _rename_to_version(tmp, model_base, {**info, "exported_at": time.time()}, version)

    with atomic_directory(model_base / ".export", publish=publish) as tmp:
        archive = archive or build_archive(model, class_names, image_size=image_size, ood=ood)
        marks.append(time.perf_counter())
        archive.write(tmp)
        (tmp / LABELS).write_text("".join(f"{c}\n" for c in class_names))
        marks.append(time.perf_counter())
    marks.append(time.perf_counter())  # fsynced and renamed
    if keep:
        prune_versions(model_base, keep, protect=chosen)
    path = model_base / str(chosen)
    seconds = {name: round(marks[i + 1] - marks[i], 3)
               for i, name in enumerate(("trace", "save", "fsync"))}
    seconds["total"] = round(marks[-1] - marks[0], 3)
    log.info("exported %s (%s)", path, ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
    return ExportResult(chosen, path, seconds)


def _rename_to_version(tmp: Path, model_base: Path, info: dict[str, Any],
                       version: int | None) -> int:
    fixed = version is not None
    candidate = version if version is not None else max(list_versions(model_base), default=0) + 1
    if candidate < 1:
        raise ValueError(f"versions are positive integers, got {candidate}")
    while True:
        # The manifest names its own version, so it is (re)written per attempt.
        manifest_path = tmp / MANIFEST
        manifest_path.write_text(json.dumps({**info, "version": candidate,
                                             "incept_version": __version__}, indent=2,
                                            sort_keys=True) + "\n")
        with open(manifest_path, "rb") as f:
            os.fsync(f.fileno())
        target = model_base / str(candidate)
        try:
            if target.exists():
                raise FileExistsError(errno.EEXIST, "version exists", str(target))
            os.rename(tmp, target)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if fixed:
                raise FileExistsError(f"version {candidate} already exists in {model_base}") from None
            candidate = max(max(list_versions(model_base), default=0), candidate) + 1
            continue
        fsync_dir(model_base)
        return candidate


def prune_versions(model_base: Path, keep: int, protect: int | None = None) -> list[int]:
    """Remove all but the newest ``keep`` versions. Each is first renamed to a hidden
    name (atomic: TF Serving sees it vanish whole), then deleted."""
    versions = list_versions(model_base)
    kept = {protect, pinned_version(model_base)}  # a pinned version serves: never pruned
    doomed = [v for v in versions[:-keep] if v not in kept] if keep > 0 else []
    for v in doomed:
        hidden = model_base / f".removed.{v}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.rename(model_base / str(v), hidden)
            shutil.rmtree(hidden, ignore_errors=True)
    if doomed:
        fsync_dir(model_base)
    return doomed


def read_manifest(version_dir: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((Path(version_dir) / MANIFEST).read_text())
    return manifest
