"""Bless and export: a checkpoint is blessed when it beats the job's best
evaluated accuracy so far (and the spec's ``bless_threshold``, if set) and the
version being served under ``models/<spec.serving_name()>/`` when the two are
comparable (same dataset fingerprint and class list; otherwise only a spec with
``replace: true`` replaces it); a blessed checkpoint becomes a new SavedModel
version there, its manifest saying why (``export_reason``).

Callers hold the job's bless lock (``locks.job_lock_name``) from reading the
best-so-far until the result file is written, so two workers evaluating two
checkpoints of one job cannot both beat the same best. Version numbers are
allocated by ``incept.export`` with an atomic rename, so exporters of
different jobs into one model never share a version. An export whose result
file was never written (worker killed) is found again by its manifest and
reused, so a redo does not export the same checkpoint twice.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from incept.export import LABELS, build_manifest, export_model, read_manifest
from incept.layout import Layout, RunLayout, list_versions
from incept.layout import served_version as layout_served_version

log = logging.getLogger(__name__)


@dataclass
class Blessing:
    blessed: bool
    reason: str
    model_name: str
    version: int | None = None
    ood: dict | None = None
    compute_s: float = 0.0
    # What the export cost (incept.export.ExportResult.seconds).
    export_seconds: dict | None = None

    def fields(self) -> dict:
        out = {"blessed": self.blessed, "bless_reason": self.reason,
               "exported_version": self.version,
               "served_model": self.model_name if self.version is not None else None,
               "export_s": self.export_seconds}
        if self.ood is not None:
            out["ood"] = self.ood
        return out


def find_export(model_base: Path, job_id: str, step: int) -> tuple[int, dict] | None:
    for version in reversed(list_versions(model_base)):
        try:
            manifest = read_manifest(model_base / str(version))
        except (OSError, json.JSONDecodeError):
            continue
        if manifest.get("job_id") == job_id and manifest.get("step") == int(step):
            return version, manifest
    return None


def decide(accuracy: float, best: dict | None, threshold: float | None) -> tuple[bool, str]:
    if threshold is not None and accuracy < threshold:
        return False, f"accuracy {accuracy:.4f} is below the spec's bless_threshold {threshold}"
    if best is not None and accuracy <= best["accuracy"]:
        return False, (f"accuracy {accuracy:.4f} does not beat the best so far "
                       f"{best['accuracy']:.4f} (step {best['step']})")
    if best is None:
        return True, "first evaluated checkpoint of the job"
    return True, f"accuracy {accuracy:.4f} beats {best['accuracy']:.4f} (step {best['step']})"


def served_version(model_base: Path) -> tuple[int, dict, list[str]] | None:
    """The version that serves (the pinned one, else the newest: ``incept.layout``),
    its manifest and class list."""
    version = layout_served_version(model_base)
    if version is None:
        return None
    version_dir = model_base / str(version)
    try:
        manifest = read_manifest(version_dir)
        classes = (version_dir / LABELS).read_text().splitlines()
    except (OSError, json.JSONDecodeError):
        manifest, classes = {}, []
    return version, manifest, classes


def against_served(accuracy: float, served: tuple[int, dict, list[str]] | None,
                   fingerprint: str, class_names: list[str], replace: bool) -> tuple[bool, str]:
    """A served model only gets better: compared with the served version when both
    were evaluated on the same dataset (fingerprint) and class list; otherwise only
    a spec with ``replace: true`` may take its place."""
    if served is None:
        return True, "no version served yet"
    version, manifest, classes = served
    comparable = (manifest.get("dataset_fingerprint") == fingerprint
                  and list(classes) == list(class_names))
    served_accuracy = (manifest.get("metrics") or {}).get("accuracy")
    if comparable and isinstance(served_accuracy, int | float):
        if accuracy <= served_accuracy:
            return False, (f"accuracy {accuracy:.4f} does not beat served version {version} "
                           f"({served_accuracy:.4f}, job {manifest.get('job_id')})")
        return True, f"beats served version {version} ({served_accuracy:.4f})"
    if replace:
        return True, (f"replaces served version {version} (another dataset or class list; "
                      "the spec says replace: true)")
    return False, (f"served version {version} was trained on another dataset or class list: "
                   "set replace: true in the spec to replace it")


def bless_and_export(layout: Layout, run: RunLayout, restored, result: dict, *,
                     open_set: tuple, keep_versions: int | None, cached=None) -> Blessing:
    """``open_set``: the checkpoint's calibrated (OpenSetScore, record).
    ``cached``: the job's ``incept.evaluation.cached.HeadOnlyJob``, whose export
    archive (the traced serving function) the job's versions share."""
    spec = restored.spec
    model_name = spec.serving_name()
    blessed, reason = decide(result["accuracy"], run.best_evaluation(), spec.bless_threshold)
    if not blessed:
        return Blessing(False, reason, model_name)
    model_base = layout.model(model_name)
    found = find_export(model_base, run.job_id, result["step"])
    if found is None:
        better, why = against_served(result["accuracy"], served_version(model_base),
                                     result["dataset_fingerprint"], list(restored.class_names),
                                     spec.replace)
        if not better:
            return Blessing(False, why, model_name)
        reason = f"{reason}; {why}"
    if found is not None:
        version, manifest = found
        log.info("job %s step %d: already exported as %s version %d", run.job_id,
                 result["step"], model_name, version)
        return Blessing(True, reason, model_name, version, manifest.get("ood_calibration"))
    started = time.perf_counter()
    ood, calibration = open_set
    manifest = build_manifest(model_name, run.job_id, result["step"], spec,
                              ema=restored.ema_applied,
                              dataset_fingerprint=result["dataset_fingerprint"], metrics=result,
                              ood_calibration=calibration)
    manifest["export_reason"] = reason
    archive = cached.export_archive() if cached is not None else None
    exported = export_model(restored.model, restored.class_names, model_base,
                            image_size=result["image_size"], ood=ood, manifest=manifest,
                            keep=keep_versions, archive=archive)
    seconds = dict(exported.seconds)
    if cached is not None:
        # The trace, if this export paid for it (not when the job was prepared).
        seconds["trace"] = round(time.perf_counter() - started - seconds["total"], 3)
    return Blessing(True, reason, model_name, exported.version, calibration,
                    time.perf_counter() - started, seconds)
