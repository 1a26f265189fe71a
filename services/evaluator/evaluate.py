"""Evaluate one checkpoint of one job and record the result everywhere:
``runs/<job>/eval/<step>.json`` (atomic, written last: it is the proof the
work is done), TensorBoard summaries beside it, the job's Redis hash and
event stream, and -- when the checkpoint is blessed -- a new SavedModel version.

Idempotent per (job, step): a result on disk makes a repeated request a no-op,
and a Redis lock per (job, step) keeps two workers from evaluating the same
checkpoint at once. A checkpoint that cannot be read leaves an error record
(``<step>.error.json``) so the reconciler does not ask for it again.

Redis records, exactly once per (job, step), whatever crashes or outages
happen: the result file on disk is the source of truth, and Redis is told
about it by ``publish``, which writes the hash fields (``latest_eval``,
``best``, ``exported_versions``, ``served_model``) and the ``eval`` (and
``export``) events from that file alone, in one MULTI/EXEC guarded by a
marker ``eval:<step>`` (``incept.jobstate.record_once``). The marker and the
events land together or not at all, so publishing is safe to repeat and to
race. It is attempted right after the result is written (with redis-py's
bounded retries), again by any later request for the step (which finds the
result on disk), and on every reconciler pass for each result whose marker
is missing (``reconciler.republish``) -- so an evaluation that finished while
Redis was away is published once Redis is back. The hash fields are merged
order-independently (latest = highest step, best by ``incept.layout.eval_rank``:
highest accuracy, then lowest loss, then earliest step; versions = union), so a late publish does not roll them back.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from incept.errors import UserError
from incept.fsutil import write_json_atomic
from incept.jobstate import JobState, all_evaluated, record_once
from incept.layout import Layout, RunLayout, eval_rank
from services.evaluator.bless import bless_and_export
from services.evaluator.locks import eval_lock_name, held_lock, job_lock_name, model_lock_name

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 32
BLESS_LOCK_WAIT_S = 1800.0


class EvaluationFailed(UserError):
    """The checkpoint (or its dataset) cannot be evaluated; retrying will not help."""


def _unchanged_since(run: RunLayout, step: int, when: float) -> bool:
    """No file of checkpoint ``step`` was written after ``when`` (a rewritten
    checkpoint deserves a new try)."""
    from incept.checkpoints import checkpoint_prefix

    prefix = checkpoint_prefix(run, step)
    files = list(prefix.parent.glob(prefix.name + ".*"))
    return all(f.stat().st_mtime <= when for f in files)


@dataclass
class Outcome:
    status: str  # "evaluated" | "already_done" | "busy" | "failed"
    result: dict | None = None
    compute_s: float = 0.0

    def summary(self) -> dict:
        out = {"status": self.status, "compute_s": round(self.compute_s, 3)}
        if self.result:
            out.update({k: self.result.get(k) for k in
                        ("job_id", "step", "accuracy", "recall_at_5", "loss", "blessed",
                         "exported_version")})
        return out


def evaluate_checkpoint(layout: Layout, conn: redis.Redis, job_id: str, step: int, *,
                        keep_versions: int | None = None,
                        batch_size: int = EVAL_BATCH_SIZE) -> Outcome:
    run = layout.run(job_id)
    step = int(step)
    existing = run.read_eval(step)
    if existing is not None:
        log.info("job %s step %d: already evaluated, nothing to do", job_id, step)
        publish_or_defer(conn, run, existing)  # in case Redis was away when it finished
        return Outcome("already_done", existing)
    with held_lock(conn, eval_lock_name(job_id, step), blocking=False) as acquired:
        if not acquired:
            log.info("job %s step %d: another worker is evaluating it", job_id, step)
            return Outcome("busy")
        existing = run.read_eval(step)  # finished while we waited for the lock
        if existing is not None:
            publish_or_defer(conn, run, existing)
            return Outcome("already_done", existing)
        known_failure = run.read_eval_error(step)
        if known_failure is not None and _unchanged_since(run, step, known_failure["failed_at"]):
            raise EvaluationFailed(f"job {job_id!r} step {step}: {known_failure['error']}")
        try:
            return _evaluate(layout, conn, run, step, keep_versions, batch_size)
        except UserError as e:
            record_failure(conn, run, step, str(e))
            raise EvaluationFailed(f"job {job_id!r} step {step}: {e}") from None


# The last head-only job evaluated in this process: its model and cached
# features serve its next checkpoints (one job's worth of memory).
_head_only_jobs: dict[tuple, object] = {}


def _head_only_job(layout: Layout, run: RunLayout, dataset_dir: Path):
    from incept.evaluation.cached import HeadOnlyJob

    key = (str(layout.root), run.job_id, run.spec.stat().st_mtime_ns, str(dataset_dir))
    job = _head_only_jobs.get(key)
    if job is None:
        _head_only_jobs.clear()
        job = _head_only_jobs[key] = HeadOnlyJob(layout, run, dataset_dir)
    return job


def prepare_head_only(layout: Layout, job_id: str) -> dict:
    """Get a head-only job ready before its first checkpoint
    (``incept.queues.enqueue_prepare``; the trainer asks when its feature pass
    starts and again when it ends): the model built, the export traced and
    its graph written (each version is then a checkpoint write) -- none of it
    needs the features -- then, once the cache is complete, the features read
    and the open-set score fitted. What is ready already is not redone."""
    from incept.checkpoints import load_run_spec
    from incept.spec import is_head_only
    from incept.training.features import NotCached

    started = time.perf_counter()
    run = layout.run(job_id)
    try:
        spec = load_run_spec(run)
        if not is_head_only(spec):
            return {"status": "skipped", "reason": "not a head-only job"}
        job = _head_only_job(layout, run, spec.dataset_dir(layout))
        job.export_archive().write_graph()
        with contextlib.suppress(NotCached):  # the feature pass is still filling the cache
            job.read_features(compute=False)
    except (UserError, OSError, ValueError) as e:
        log.info("job %s: not prepared ahead of its checkpoints (%s)", job_id, e)
        return {"status": "skipped", "reason": str(e)[:500]}
    seconds = round(time.perf_counter() - started, 3)
    log.info("job %s: prepared for evaluation in %.1f s (features %s)", job_id, seconds,
             "read" if job.has_features else "not complete yet")
    return {"status": "prepared", "seconds": seconds, "features": job.has_features}


def _forward_outputs(layout: Layout, run: RunLayout, step: int, batch_size: int):
    """The checkpoint through the whole model: (restored, validation outputs, open set)."""
    from incept.checkpoints import restore_for_inference
    from incept.evaluation.metrics import forward_fn, run_split
    from incept.evaluation.open_set import fit_open_set

    restored = restore_for_inference(run, step, layout=layout)
    dataset_dir = restored.spec.dataset_dir(layout)
    image_size = restored.spec.resolved_image_size()
    forward = forward_fn(restored.model, image_size)
    validation = run_split(restored.model, dataset_dir, "validation", image_size=image_size,
                           batch_size=batch_size, forward=forward)
    open_set = fit_open_set(restored.model, dataset_dir, image_size=image_size,
                            num_classes=len(restored.class_names), validation=validation,
                            batch_size=batch_size, forward=forward)
    return restored, validation, open_set


def checkpoint_outputs(layout: Layout, run: RunLayout, step: int, batch_size: int):
    """(restored, validation outputs, (open-set layer, record), HeadOnlyJob or
    None). A head-only job's come from its cached features: the backbone does
    not run (``incept.evaluation.cached``)."""
    from incept.checkpoints import load_run_spec
    from incept.spec import is_head_only

    spec = load_run_spec(run)
    if is_head_only(spec):
        job = _head_only_job(layout, run, spec.dataset_dir(layout))
        return (*job.evaluate(step), job)
    return (*_forward_outputs(layout, run, step, batch_size), None)


def _evaluate(layout: Layout, conn: redis.Redis, run: RunLayout, step: int,
              keep_versions: int | None, batch_size: int) -> Outcome:
    from incept.checkpoints import load_run_spec
    from incept.data.dataset import DatasetInfo
    from incept.evaluation.metrics import classification_metrics

    job_id = run.job_id
    started = time.perf_counter()
    dataset_dir = load_run_spec(run).dataset_dir(layout)
    info = DatasetInfo.load(dataset_dir)
    if info.count("validation") == 0:
        raise UserError(f"dataset {dataset_dir} has no validation images to evaluate on")
    restored, validation, open_set, cached = checkpoint_outputs(layout, run, step, batch_size)
    spec = restored.spec
    if list(info.class_names) != list(restored.class_names):
        raise UserError(f"dataset {dataset_dir} now has classes {info.class_names}, "
                        f"the checkpoint was trained on {restored.class_names}")
    metrics = classification_metrics(validation.logits, validation.labels, restored.class_names)
    _write_per_image(run, step, validation, open_set)
    compute_s = time.perf_counter() - started
    result = _result_fields(run, step, metrics, restored, open_set, info, cached)
    # Decide, export and write the result under the job's lock, so concurrent
    # evaluations of one job see each other's results when comparing with the best.
    with held_lock(conn, job_lock_name(job_id), wait_s=BLESS_LOCK_WAIT_S) as acquired:
        if not acquired:
            raise TimeoutError(f"job {job_id}: bless lock still held after {BLESS_LOCK_WAIT_S} s")
        existing = run.read_eval(step)
        if existing is not None:
            # Our checkpoint lock lapsed (Redis was away) and another worker finished it.
            publish_or_defer(conn, run, existing)
            return Outcome("already_done", existing)
        with held_lock(conn, model_lock_name(spec.serving_name()),
                       wait_s=BLESS_LOCK_WAIT_S) as model_locked:
            if not model_locked:
                raise TimeoutError(f"model {spec.serving_name()}: export lock still held")
            blessing = bless_and_export(layout, run, restored, result, open_set=open_set,
                                        keep_versions=keep_versions, cached=cached)
        result.update(blessing.fields())
        result["evaluated_at"] = time.time()
        # eval_s: the checkpoint's evaluation alone; compute_s: with its export.
        result["eval_s"] = round(compute_s, 3)
        result["compute_s"] = compute_s + blessing.compute_s
        _write_summaries(run, step, result)
        write_json_atomic(run.eval_result(step), result)
    publish_or_defer(conn, run, result)
    _advance_phase(conn, run)
    log.info("job %s step %d: accuracy %.4f recall@%d %.4f loss %.4f on %d images%s", job_id,
             step, result["accuracy"], result["top_k"], result["recall_at_5"], result["loss"],
             result["num_images"],
             f"; blessed, exported version {result['exported_version']}" if result["blessed"] else "")
    return Outcome("evaluated", result, compute_s)


def _result_fields(run: RunLayout, step: int, metrics: dict, restored, open_set, info,
                   cached) -> dict:
    """The evaluation's record before the blessing adds its verdict and timings."""
    result = {
        "job_id": run.job_id, "step": step, **metrics,
        "class_names": list(restored.class_names), "ood": open_set[1],
        "ema": restored.ema_applied, "dataset_fingerprint": info.fingerprint,
        "model_name": restored.spec.model_name, "image_size": restored.spec.resolved_image_size(),
        "features": "cached" if cached is not None else "forward",
    }
    if cached is not None:
        result["feature_views"] = cached.feature_views
    return result


def _advance_phase(conn: redis.Redis, run: RunLayout) -> None:
    """The job's last phase, "exported", once the trainer is done and every
    checkpoint is evaluated (the trainer reports the phases before it)."""
    if not all_evaluated(run):
        return
    try:
        JobState(conn).advance_phase(run.job_id, "exported")
    except (redis.ConnectionError, redis.TimeoutError) as e:
        log.warning("job %s: phase not recorded, Redis is unavailable (%s)", run.job_id, e)


def _write_per_image(run: RunLayout, step: int, validation, open_set) -> None:
    """The sidecar the page's gallery reads: each validation image's outcome,
    with the key of its thumbnail in the dataset (``incept.layout.thumbnail_key``)."""
    import numpy as np

    from incept.evaluation.metrics import finite_or_none, softmax
    from incept.layout import thumbnail_key

    labels = np.asarray(validation.labels, dtype=np.int64)
    if len(validation.filenames) != len(labels):
        # File names that do not match the outputs one to one: no per-image record
        # (the page says so) rather than a wrong one.
        log.warning("job %s step %d: %d file names for %d images, no per-image results",
                    run.job_id, step, len(validation.filenames), len(labels))
        return
    probs = softmax(validation.logits)
    predicted = probs.argmax(axis=1)
    true_p = probs[np.arange(len(labels)), labels]
    losses = -np.log(np.clip(true_p, 1e-12, 1.0))
    ood = (open_set[0](validation.logits, validation.pre_logits).numpy()
           if open_set else np.full(len(labels), np.nan))
    images = [{"file": f, "thumbnail": thumbnail_key(f), "label": int(t), "predicted": int(p),
               "score": round(float(probs[i, p]), 6), "loss": finite_or_none(round(float(losses[i]), 6)),
               "ood_score": finite_or_none(float(ood[i]))}
              for i, (f, t, p) in enumerate(zip(validation.filenames, labels, predicted, strict=True))]
    write_json_atomic(run.eval_images(step), {"job_id": run.job_id, "step": step, "images": images})


def _write_summaries(run: RunLayout, step: int, result: dict) -> None:
    import tensorflow as tf

    from incept.training.reporting import write_scalar

    writer = tf.summary.create_file_writer(str(run.eval_dir))
    with writer.as_default():
        for name in ("accuracy", "recall_at_5", "loss", "ece"):
            write_scalar(f"eval/{name}", result[name], step)
        if result.get("ood"):
            write_scalar("eval/ood_threshold", result["ood"]["threshold"], step)
    writer.flush()
    writer.close()


def publish(conn: redis.Redis, run: RunLayout, result: dict) -> bool:
    """Tell Redis about an evaluation result (see the module docstring), once per
    (job, step); returns whether this call did it (False: it was done before)."""
    step = int(result["step"])
    accuracy = result["accuracy"]
    summary = {"step": step, "accuracy": accuracy, "recall_at_5": result["recall_at_5"],
               "loss": result["loss"]}
    version = result.get("exported_version")

    def fields_from(current: dict) -> dict:
        fields: dict = {}
        latest = current.get("latest_eval")
        if not isinstance(latest, dict) or latest.get("step", -1) <= step:
            fields["latest_eval"] = summary
        best = current.get("best")
        if not isinstance(best, dict) or eval_rank(summary) > eval_rank(best):
            fields["best"] = {"step": step, "accuracy": accuracy, "loss": result["loss"]}
        if version is not None:
            fields["exported_versions"] = sorted(set(current.get("exported_versions") or []) | {version})
            fields["served_model"] = result.get("served_model")
        return fields

    events = [("eval", {**summary, "num_images": result["num_images"], "ece": result["ece"],
                        "blessed": result["blessed"], "ood": result.get("ood")})]
    if version is not None:
        events.append(("export", {"version": version, "model": result.get("served_model"),
                                  "step": step}))
    return record_once(conn, run.job_id, f"eval:{step}", fields_from, events)


def publish_or_defer(conn: redis.Redis, run: RunLayout, result: dict) -> None:
    """``publish``, or leave it to a later pass of the reconciler when Redis does
    not answer (after redis-py's bounded retries): the result is safe on disk."""
    try:
        publish(conn, run, result)
    except (redis.ConnectionError, redis.TimeoutError) as e:
        log.warning("job %s step %d: result saved, but Redis is unavailable (%s); "
                    "the reconciler publishes it when Redis is back", run.job_id, result["step"], e)


def record_failure(conn: redis.Redis, run: RunLayout, step: int, reason: str) -> None:
    """A checkpoint that cannot be evaluated: its error record on the volume, then
    the job's ``eval_error`` field and ``error`` event (once per step, see
    ``publish_failure``). The evaluation's own failure and the reconciler's giving
    up both come here."""
    log.error("job %s step %d: evaluation failed: %s", run.job_id, step, reason)
    record = {"job_id": run.job_id, "step": int(step), "error": reason, "failed_at": time.time()}
    try:
        write_json_atomic(run.eval_error(step), record)
    except OSError as e:
        log.error("job %s step %d: could not write the error record: %s", run.job_id, step, e)
    try:
        publish_failure(conn, run, record)
    except (redis.ConnectionError, redis.TimeoutError) as e:
        log.warning("job %s step %d: failure recorded, but Redis is unavailable (%s); "
                    "the reconciler publishes it when Redis is back", run.job_id, step, e)


def publish_failure(conn: redis.Redis, run: RunLayout, record: dict) -> bool:
    """Tell Redis about an error record, once per (job, step) like ``publish``."""
    step = int(record["step"])
    error = {"step": step, "error": record["error"]}
    return record_once(conn, run.job_id, f"error:{step}", lambda _current: {"eval_error": error},
                       [("error", {"source": "evaluator", **error})])
