"""One training job, from ``runs/<id>/spec.json`` to its final checkpoint.

The job: build the model for the spec (under the ``tf.distribute`` strategy),
load the base checkpoint, restore the newest good checkpoint of the run if
there is one (falling back past a corrupt one, loudly) -- ``state`` -- then
step (``step``'s compiled train step, ``loop``'s ``TrainLoop``) until
``max_steps``, a stop (SIGTERM, cancel flag) or an error. Checkpoints every N
steps and/or seconds, plus a final one; after each, an eval request.

A SIGTERM stops the job after a checkpoint. Under MultiWorkerMirroredStrategy a
SIGTERM to any one worker stops them all at the same step (TF's
PreemptionCheckpointHandler agrees on it through the coordination service):
every worker saves that checkpoint and exits as preempted, and restarting all
of them resumes from it.

Frozen layers (outside ``trainable_scopes``) get Keras ``trainable=False``, so
they run in inference mode even in a training step: batch norm uses its moving
statistics. That makes the backbone a fixed function, which is what allows
the head-only path to train on cached features and produce the same model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from incept.checkpoints import CheckpointError, class_names_path, load_run_spec
from incept.errors import UserError
from incept.fsutil import write_json_atomic
from incept.layout import Layout, RunLayout
from incept.resources import job_resource_problems
from incept.resources import limits as resource_limits
from incept.spec import JobSpec, is_head_only
from incept.training import distribute, features, inputs, optim
from incept.training.loop import Stop, TrainLoop
from incept.training.redis_link import RedisLink
from incept.training.reporting import FeaturePassProgress, Reporter
from incept.training.state import TrainState, build_state, resolve_checkpoint, restore_newest
from incept.training.step import make_train_step

if TYPE_CHECKING:
    from incept.data.dataset import DatasetInfo

log = logging.getLogger("incept.trainer")


@dataclass
class TrainResult:
    job_id: str
    state: str  # succeeded | cancelled | preempted
    step: int
    max_steps: int
    path: str  # head_only | full
    resumed_from: int | None = None
    checkpoints: list[int] = field(default_factory=list)
    unsent_evals: list[int] = field(default_factory=list)
    images_per_sec: float = 0.0
    # Throughput after the first (tracing) step, checkpoint saves excluded.
    steady_images_per_sec: float = 0.0
    feature_seconds: float = 0.0


def default_xla(head_only: bool) -> bool:
    """Whether to XLA-compile the train step when the spec leaves it unset: on
    a GPU, and on a CPU for the full path. A full step is long chains of convolution, batch norm and ReLU whose
    fusion XLA's CPU backend does well: measured on 2 cores, a training step
    took 12-15 % less time for Inception v4 at 149 px and 15-25 % less for the
    tiny net, for a longer first step (+35 s and +4 s). (Keras's fit leaves XLA
    off on CPU-only machines.) A head-only step on a CPU is two small matrix
    products: nothing to fuse, the compile would be pure cost."""
    return distribute.has_gpu() or not head_only


def weights_digest(variables) -> str:
    """A digest of the trained variables: equal on all workers of a synchronous
    job. (Batch-norm moving statistics are per worker, as in Keras: the chief's
    are saved.)"""
    h = hashlib.sha256()
    for var in variables:
        h.update(var.path.encode())
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(var.value)).tobytes())
    return h.hexdigest()


def _report_final_state(reporter: Reporter, result: TrainResult) -> None:
    if result.state == "preempted":
        # Not a final state: a restart resumes from the checkpoint just written.
        reporter.state("queued", step=result.step, preempted_at=result.step)
    elif result.state != "succeeded":
        reporter.state(result.state, step=result.step, last_checkpoint_step=result.step)
    else:
        from incept.jobstate import all_evaluated

        reporter.phase("evaluating")
        reporter.state(result.state, step=result.step, last_checkpoint_step=result.step)
        # After the final state is on disk (see jobstate.all_evaluated): the
        # evaluator may have finished every checkpoint before it was.
        if all_evaluated(reporter.run):
            reporter.phase("exported")


@dataclass
class _Job:
    """A job ready to train: its spec, its run directory and its dataset."""

    spec: JobSpec
    run: RunLayout
    layout: Layout
    info: DatasetInfo
    dataset_dir: Path
    max_steps: int
    chief: bool  # this process writes the run's files (the only one, or worker 0)

    @property
    def num_train(self) -> int:
        return self.info.count("train")


def _load_job(run: RunLayout, layout: Layout, chief: bool) -> _Job:
    from incept.data.dataset import DatasetInfo

    try:
        spec = load_run_spec(run)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    dataset_dir = spec.dataset_dir(layout)
    info = DatasetInfo.load(dataset_dir)
    num_train = info.count("train")
    if num_train == 0:
        raise UserError(f"dataset {dataset_dir} has no training images")
    if num_train < spec.batch_size:
        raise UserError(f"dataset {dataset_dir} has {num_train} training images, fewer than "
                        f"batch_size {spec.batch_size}")
    resolve_checkpoint(layout, spec.checkpoint)
    problems = job_resource_problems(spec, num_train, resource_limits().memory_bytes)
    if problems:
        raise UserError("the job does not fit this trainer: " + "; ".join(problems))
    if chief and not class_names_path(run).exists():
        write_json_atomic(class_names_path(run), list(info.class_names))
    return _Job(spec, run, layout, info, dataset_dir, optim.steps_for(spec, num_train), chief)


def _record_early_failure(run, redis_url: str | None, message: str) -> None:
    if run.root.is_dir():
        write_json_atomic(run.status, {"job_id": run.job_id, "state": "failed", "error": message,
                                       "updated_at": time.time()})
    if redis_url:
        import redis

        from incept.jobstate import JobState
        from incept.queues import connect

        try:
            conn = connect(redis_url, timeout_s=3.0)
            JobState(conn).set_state(run.job_id, "failed", error=message[:2000])
            conn.close()
        except (redis.RedisError, OSError):
            log.warning("Redis unreachable: job %s failure recorded in status.json only", run.job_id)


def _install_signal_handlers(stop: Stop, handle_signals: bool) -> dict:
    """The handlers to put back once the job is done."""
    previous_handlers = {}
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is not None:
        # Restored afterwards even without handle_signals: a multi-worker job's
        # PreemptionCheckpointHandler takes SIGTERM over.
        previous_handlers[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)
    if handle_signals and main:
        # SIGTERM (Kubernetes, rq) and Ctrl-C: checkpoint at the next step and stop;
        # running the job again resumes from there.
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(signum, lambda *_: stop.set("preempted"))
            previous_handlers.setdefault(signum, previous)
    return previous_handlers


def train(job_id: str, layout: Layout, *, redis_url: str | None = None, path: str = "auto",
          progress_interval_s: float = 5.0, stop: Stop | None = None,
          handle_signals: bool = True, show_bar: bool | None = None) -> TrainResult:
    strategy = distribute.make_strategy()
    chief = distribute.is_chief(strategy)
    run = layout.run(job_id)
    try:
        job = _load_job(run, layout, chief)
    except (UserError, OSError, ValueError) as e:
        # No reporter yet: record the failure directly so the job does not look queued forever.
        if chief:
            _record_early_failure(run, redis_url, str(e))
        raise
    link = RedisLink(redis_url, job_id) if (redis_url and chief) else None
    reporter = Reporter(run, link, chief=chief, max_steps=job.max_steps, show_bar=show_bar)
    stop = stop or Stop()
    previous_policy = keras.mixed_precision.global_policy()
    previous_handlers = _install_signal_handlers(stop, handle_signals)
    result = None
    try:
        result = _train(job, strategy, reporter, link, stop, path=path,
                        progress_interval_s=progress_interval_s)
    except BaseException as e:
        reporter.state("failed", error=str(e)[:2000])
        raise
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        # mixed_float16 is process-global in Keras: do not leak it to later models.
        keras.mixed_precision.set_global_policy(previous_policy)
        try:
            reporter.close()
            if result is not None:
                # The final state goes out last, once the training is torn down and
                # TensorBoard closed: whoever sees it (a user, the next job, a stack
                # being stopped) finds the job about to return, not still working.
                _report_final_state(reporter, result)
        finally:
            # Flush pending state and eval requests (bounded: SIGTERM leaves ~30 s).
            unsent = link.close(timeout_s=15.0) if link is not None else []
    result.unsent_evals = unsent
    return result


@dataclass(frozen=True)
class _Choices:
    """How this job trains on this machine."""

    head_only: bool
    xla: bool
    mixed: bool

    @property
    def path(self) -> str:
        return "head_only" if self.head_only else "full"


def _choose(spec: JobSpec, path: str, strategy: tf.distribute.Strategy) -> _Choices:
    mixed = spec.mixed_precision if spec.mixed_precision is not None else distribute.has_gpu()
    head_only = path == "head_only" or (path == "auto" and is_head_only(spec))
    xla = spec.xla if spec.xla is not None else default_xla(head_only)
    if path == "head_only" and not is_head_only(spec):
        raise UserError("the head-only path needs trainable_scopes within the net's heads")
    replicas = strategy.num_replicas_in_sync
    if spec.batch_size % replicas:
        raise UserError(f"batch_size {spec.batch_size} is not divisible by {replicas} replicas")
    return _Choices(head_only=head_only, xla=xla, mixed=mixed)


def _train_batches(job: _Job, feats: features.SplitFeatures | None,
                   step: int) -> tf.data.Dataset:
    """The global batches to train on: the head-only path's cached ``feats``, or
    the images. A resumed job draws a fresh example order (seeded by the step)
    instead of skipping through the stream it had consumed."""
    spec = job.spec
    data_seed = spec.seed if step == 0 else (spec.seed * 1_000_003 + step) % (2**31 - 1)
    if feats is None:
        ds = inputs.train_images(job.dataset_dir, job.info, spec.resolved_image_size(),
                                 spec.batch_size, augment=spec.augment, seed=data_seed)
    else:
        ds = features.feature_batches(feats, spec.batch_size, seed=data_seed,
                                      shuffle_buffer=inputs.shuffle_buffer(job.num_train))
    return ds.with_options(inputs.shard_options())


def head_only_features(job: _Job, state: TrainState, cluster: tf.distribute.Strategy,
                       reporter: Reporter, interval_s: float) -> features.SplitFeatures:
    """The training split's features (the views the job trains on) and the
    validation split's (the evaluation view, for the evaluator), from the cache
    or computed once, with progress; a multi-worker job splits the pass by
    worker. Returns the training features."""
    spec = job.spec
    reporter.phase("features")
    key = features.backbone_key(spec.model_name, spec.resolved_image_size(), state.base, spec.seed)
    shard = features.Shard(distribute.worker_index(cluster), distribute.num_workers(cluster))
    found = features.cached_features(
        state.model, job.layout.feature_cache, key, job.dataset_dir, spec.resolved_image_size(),
        spec.seed, {"train": features.views_of(spec), "validation": [0]},
        progress=FeaturePassProgress(reporter, interval_s), shard=shard,
        barrier=lambda: distribute.barrier(cluster))
    feats = found["train"]
    feats.compute_seconds = sum(f.compute_seconds for f in found.values())
    log.info("head-only: features for %d training and %d validation images (%d views cached, "
             "%d computed in %.1f s)", len(feats), len(found["validation"]),
             sum(f.hits for f in found.values()), sum(f.computed for f in found.values()),
             feats.compute_seconds)
    return feats


def _feature_worker_done(job: _Job, state: TrainState, cluster, feature_seconds: float) -> TrainResult:
    """A multi-worker head-only job's worker other than the chief: its shard of
    the feature pass is in the cache, the chief trains the heads."""
    shutil.rmtree(state.manager_dir, ignore_errors=True)
    log.info(json.dumps({"event": "done", "job_id": job.run.job_id, "state": "succeeded", "step": 0,
                         "worker": distribute.worker_index(cluster), "features_only": True}))
    return TrainResult(job_id=job.run.job_id, state="succeeded", step=0, max_steps=job.max_steps,
                       path="head_only", feature_seconds=feature_seconds)


def _sample_images(job: _Job, ds: tf.data.Dataset, head_only: bool) -> tf.Tensor:
    """A few training images for TensorBoard (the head-only path trains on features)."""
    spec = job.spec
    sample = (inputs.train_images(job.dataset_dir, job.info, spec.resolved_image_size(), 4,
                                  augment=spec.augment, seed=spec.seed) if head_only else ds)
    return next(iter(sample.take(1)))[0]


def _train(job: _Job, strategy: tf.distribute.Strategy, reporter: Reporter, link: RedisLink | None,
           stop: Stop, *, path: str, progress_interval_s: float) -> TrainResult:
    spec, chief = job.spec, job.chief
    choices = _choose(spec, path, strategy)
    if choices.head_only and chief and link is not None:
        # The evaluator builds its model and writes the export's graph (single-threaded
        # work) while this process builds its own: two cores busy, not one; the
        # feature pass that follows then needs both. Asked again once the features
        # are cached, for it to read them while the heads train.
        link.request_prepare()
    cluster = strategy
    if choices.head_only and distribute.is_multi_worker(strategy):
        # Each worker computes its shard of the features; the heads (seconds of
        # work) then train on the chief alone, on the union: the very model a
        # single worker trains, while the other workers are done.
        strategy = tf.distribute.get_strategy()
    state = build_state(spec, num_classes=job.info.num_classes, num_train=job.num_train,
                        layout=job.layout, run=job.run, strategy=strategy, chief=chief,
                        mixed=choices.mixed)
    resumed_from = restore_newest(state.checkpoint, job.run, reporter)
    if resumed_from is not None:
        log.info("job %s resumes from step %d", job.run.job_id, resumed_from)
    step = int(state.optimizer.iterations.numpy())
    reporter.state("running", step=step, max_steps=job.max_steps, resumed_from=resumed_from,
                   path=choices.path)
    feats = None
    if choices.head_only:
        feats = head_only_features(job, state, cluster, reporter, progress_interval_s)
        if not chief:
            return _feature_worker_done(job, state, cluster, feats.compute_seconds)
        if link is not None:
            link.request_prepare()
    reporter.phase("training")
    ds = _train_batches(job, feats, step)
    feature_seconds = feats.compute_seconds if feats is not None else 0.0
    # Before the sample images below: the seeded shuffle's order depends on how
    # many times the dataset was iterated.
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    train_steps = make_train_step(spec, state, strategy, num_classes=job.info.num_classes,
                                  head_only=choices.head_only, xla=choices.xla, mixed=choices.mixed)
    if chief and step == 0 and not choices.head_only:
        reporter.images(_sample_images(job, ds, head_only=False))
    loop = TrainLoop(spec, state, strategy, train_steps, iterator, reporter, link, stop,
                     chief=chief, step=step, max_steps=job.max_steps, num_train=job.num_train,
                     last_saved=resumed_from, progress_interval_s=progress_interval_s)
    steady = loop.run()
    if chief and step == 0 and choices.head_only:
        # Not before the loop: decoding photos for TensorBoard (~1 s) would delay
        # the first checkpoint, and with it the first served version.
        reporter.images(_sample_images(job, ds, head_only=True))
    result_state = {"preempted": "preempted", "cancelled": "cancelled"}.get(stop.reason or "",
                                                                          "succeeded")
    log.info(json.dumps({"event": "done", "job_id": job.run.job_id, "state": result_state,
                         "step": loop.step, "worker": distribute.worker_index(strategy),
                         "weights_sha256": weights_digest(state.var_list)}))
    return TrainResult(job_id=job.run.job_id, state=result_state, step=loop.step,
                       max_steps=job.max_steps, path=choices.path, resumed_from=resumed_from,
                       checkpoints=loop.saved, images_per_sec=loop.images_per_sec,
                       steady_images_per_sec=steady, feature_seconds=feature_seconds)
