"""A job as the API shows it: the live Redis hash merged over what the shared
volume keeps (spec.json, status.json, eval/<step>.json), so a gateway restart
or a lost Redis keeps every job and its history."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from incept.jobstate import JobState
from incept.layout import NAME_RE, Layout, best_of

log = logging.getLogger(__name__)

_EVAL_FIELDS = ("step", "accuracy", "recall_at_5", "loss", "num_images", "ece", "blessed",
                "exported_version", "evaluated_at")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def disk_job_ids(layout: Layout) -> list[str]:
    return [run.job_id for run in layout.all_runs() if run.spec.exists()]


def job_summary(layout: Layout, state: JobState | None, job_id: str, *, full: bool = False) -> dict | None:
    run = layout.run(job_id)
    spec = _read_json(run.spec)
    status = _read_json(run.status)
    live = None
    if state is not None:
        try:
            live = state.get(job_id)
        except redis.RedisError as e:  # the volume still has the job
            log.warning("redis unavailable, serving job %s from disk: %s", job_id, e)
    if spec is None and live is None:
        return None
    merged: dict[str, Any] = {"job_id": job_id, "state": "queued"}
    if isinstance(spec, dict):
        merged["spec"] = spec
        merged["dataset"] = spec.get("dataset")
        merged["model_name"] = spec.get("served_model_name") or Path(str(spec.get("dataset", ""))).name
        merged["max_steps"] = spec.get("max_steps")
        with contextlib.suppress(OSError):
            merged["created_at"] = run.spec.stat().st_mtime
    if isinstance(status, dict):
        merged.update({k: v for k, v in status.items() if v is not None})
    if live:
        merged.update({k: v for k, v in live.items() if v not in (None, "")})
    if isinstance(merged.get("spec"), str):
        merged["spec"] = _read_json_text(merged["spec"])
    evals = run.evaluations() if full or "best" not in merged else []
    best = best_of(evals)
    if best is not None:
        merged["best"] = {"step": best["step"], "accuracy": best["accuracy"]}
    if full:
        merged["evaluations"] = [{k: e.get(k) for k in _EVAL_FIELDS} for e in evals]
        merged["best_eval"] = best
        exported = set(merged.get("exported_versions") or [])
        exported |= {e["exported_version"] for e in evals if isinstance(e.get("exported_version"), int)}
        merged["exported_versions"] = sorted(exported)
        if merged.get("latest_eval") is None and evals:
            last = evals[-1]
            merged["latest_eval"] = {k: last.get(k)
                                     for k in ("step", "accuracy", "recall_at_5", "loss")}
    return merged


@dataclass
class CheckpointOutcome:
    step: int
    outcome: str | None  # "evaluated" | "failed" | None while the evaluator is on it
    record: Path | None = None  # the result or error record on the volume
    events: frozenset = frozenset()  # (kind, step) of the events the evaluator emits for it


def checkpoint_outcomes(layout: Layout, job_id: str) -> list[CheckpointOutcome]:
    """Every complete checkpoint of the job with its evaluation outcome: a result
    (``eval/<step>.json``; events eval, and export when it was exported) or an
    error record (``eval/<step>.error.json``; event error)."""
    run = layout.run(job_id)
    out = []
    for step in run.complete_checkpoints():
        result_path, error_path = run.eval_result(step), run.eval_error(step)
        result = run.read_eval(step)
        if isinstance(result, dict):
            events = {("eval", step)}
            if isinstance(result.get("exported_version"), int):
                events.add(("export", step))
            out.append(CheckpointOutcome(step, "evaluated", result_path, frozenset(events)))
        elif error_path.exists():
            out.append(CheckpointOutcome(step, "failed", error_path, frozenset({("error", step)})))
        else:
            out.append(CheckpointOutcome(step, None))
    return out


def _read_json_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def list_jobs(layout: Layout, state: JobState | None) -> list[dict]:
    ids = set(disk_job_ids(layout))
    if state is not None:
        try:
            ids |= set(state.list_ids())
        except redis.RedisError as e:
            log.warning("redis unavailable, listing jobs from disk: %s", e)
            state = None
    jobs = []
    for job_id in ids:
        if not NAME_RE.fullmatch(job_id):
            continue
        try:
            summary = job_summary(layout, state, job_id)
        except ValueError:
            continue
        if summary is not None:
            jobs.append(summary)
    return sorted(jobs, key=lambda j: j.get("created_at") or 0, reverse=True)


SORTS = {"loss": lambda i: -(i.get("loss") or 0.0), "ood": lambda i: -(i.get("ood_score") or 0.0)}


def eval_images(layout: Layout, job_id: str, step: int, *, true: int | None = None,
                predicted: int | None = None, wrong_only: bool = False, sort: str = "loss",
                limit: int = 48) -> dict | None:
    """One evaluation's per-image results (``eval/<step>.images.json``), filtered
    by true and predicted class, sorted (by loss or open-set score, highest
    first) and cut to ``limit``; None when the evaluator wrote none."""
    record = _read_json(layout.run(job_id).eval_images(step))
    if not isinstance(record, dict) or not isinstance(record.get("images"), list):
        return None
    images = [i for i in record["images"] if isinstance(i, dict)
              and (true is None or i.get("label") == true)
              and (predicted is None or i.get("predicted") == predicted)
              and (not wrong_only or i.get("label") != i.get("predicted"))]
    images.sort(key=SORTS[sort])
    return {"job_id": job_id, "step": step, "matched": len(images), "images": images[:limit]}


def job_thumbnail(layout: Layout, job_id: str, key: str) -> Path | None:
    """The thumbnail ``key`` in the job's dataset (None when there is none)."""
    from incept.layout import thumbnail_file
    from incept.spec import parse_spec

    spec = _read_json(layout.run(job_id).spec)
    if not isinstance(spec, dict):
        return None
    try:
        path = thumbnail_file(parse_spec(spec).dataset_dir(layout), key)
    except ValueError:  # a bad key, or a spec that no longer parses
        return None
    return path if path.is_file() else None
