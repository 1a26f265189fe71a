"""One training job, from ``runs/<id>/spec.json`` to its final checkpoint.

The loop: build the model for the spec (under the ``tf.distribute`` strategy),
load the base checkpoint, restore the newest good checkpoint of the run if
there is one (falling back past a corrupt one, loudly), then step until
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
import math
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from incept.checkpoints import (
    CheckpointError,
    WeightAverages,
    build_model,
    checkpoint_prefix,
    class_names_path,
    list_checkpoints,
    load_run_spec,
    make_checkpoint,
    make_manager,
    trainable_variables_by_name,
)
from incept.errors import UserError
from incept.fsutil import write_json_atomic
from incept.layout import Layout
from incept.resources import job_resource_problems
from incept.resources import limits as resource_limits
from incept.spec import JobSpec
from incept.training import distribute, features, inputs, optim
from incept.training.redis_link import RedisLink
from incept.training.reporting import Reporter

log = logging.getLogger("incept.trainer")

# Steps per call of the compiled train loop are chosen so a call lasts about
# this long: small steps (a head, a small net) pay one Python round trip per
# call instead of one per step, while a stop or cancel waits at most this.
LOOP_SECONDS = 0.2
MAX_STEPS_PER_CALL = 100


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


def is_head_only(spec: JobSpec) -> bool:
    """slim's trainable_scopes are all within the net's logits heads."""
    from incept.nets import net_info

    heads = net_info(spec.model_name).head_scopes
    return bool(spec.trainable_scopes) and all(
        any(s.rstrip("/") == h or s.startswith(h + "/") for h in heads) for s in spec.trainable_scopes)


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


def resolve_checkpoint(layout: Layout, value: str | None) -> Path | None:
    """The spec's base checkpoint, confined to the data root (and the allowed
    checkpoint roots) here again: the spec on the volume is not trusted."""
    if not value:
        return None
    try:
        return layout.base_checkpoint(value)
    except ValueError as e:
        raise UserError(f"checkpoint: {e}") from None


class _Stop:
    """Why the loop should stop: set from a signal handler, the cancel poller
    or the caller."""

    def __init__(self):
        self.reason: str | None = None
        self.event = threading.Event()

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.event.set()


class _ClusterPreempted(Exception):
    """Raised by the PreemptionCheckpointHandler's exit_fn once this worker has
    saved the cluster-wide preemption checkpoint."""


def _cluster_preemption_handler(strategy, save_fn):
    """Multi-worker jobs: TF's PreemptionCheckpointHandler turns a SIGTERM to any
    one worker into a checkpoint that every worker saves after the same step
    (agreed through the coordination service), after which each worker's loop
    stops. It takes over SIGTERM in this process. Its own bookkeeping (run
    counts since this process started) goes to a scratch folder: our checkpoints
    already carry the step, and a restart resumes from them."""

    def exit_fn():
        raise _ClusterPreempted

    scratch = tempfile.mkdtemp(prefix="incept-preemption-")
    config = tf.distribute.experimental.TerminationConfig(exit_fn=exit_fn, save_fn=save_fn)
    ours = signal.getsignal(signal.SIGTERM)
    handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, tf.train.Checkpoint(), checkpoint_dir=scratch,
        termination_config=config)
    if signal.getsignal(signal.SIGTERM) is ours:
        # TF leaves CPU and TPU VMs on GCP to their own mechanisms and does not
        # watch SIGTERM there: each worker stops on its own, as without it.
        log.warning("PreemptionCheckpointHandler is inactive on this platform: a SIGTERM "
                    "stops only the worker that receives it")
        shutil.rmtree(scratch, ignore_errors=True)
        return None, None
    return handler, scratch


def _report_final_state(reporter: Reporter, result: TrainResult) -> None:
    if result.state == "preempted":
        # Not a final state: a restart resumes from the checkpoint just written.
        reporter.state("queued", step=result.step, preempted_at=result.step)
    else:
        reporter.state(result.state, step=result.step, last_checkpoint_step=result.step)


def _set_trainable(model: keras.Model, scopes) -> None:
    from incept.nets import layers_under

    if not scopes:
        return
    train = {id(layer) for layer in layers_under(model, scopes)}
    for layer in model.layers:
        layer.trainable = id(layer) in train


def _restore_newest(checkpoint: tf.train.Checkpoint, run, reporter: Reporter) -> int | None:
    """The step restored, or None for a fresh job. Checkpoints that all fail to
    restore stop the job: training from scratch would rotate them away."""
    steps = list_checkpoints(run)
    for step in reversed(steps):
        prefix = checkpoint_prefix(run, step)
        try:
            checkpoint.read(str(prefix)).assert_existing_objects_matched()
            return step
        except (tf.errors.OpError, AssertionError, ValueError, IndexError, KeyError) as e:
            reporter.error(f"CHECKPOINT {prefix.name} OF JOB {run.job_id} IS CORRUPT "
                           f"({str(e).splitlines()[0][:200]}); falling back to the one before")
    if steps:
        raise UserError(f"none of the checkpoints {steps} of job {run.job_id} can be restored "
                        "into the model its spec describes (a changed spec, or mixed_precision "
                        "resolved differently on this machine: set it explicitly in the spec)")
    return None


def _load_job(run, layout: Layout, chief: bool):
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
    return spec, info, dataset_dir


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


def train(job_id: str, layout: Layout, *, redis_url: str | None = None, path: str = "auto",
          progress_interval_s: float = 5.0, stop: _Stop | None = None,
          handle_signals: bool = True, show_bar: bool | None = None) -> TrainResult:
    strategy = distribute.make_strategy()
    chief = distribute.is_chief(strategy)
    run = layout.run(job_id)
    try:
        spec, info, dataset_dir = _load_job(run, layout, chief)
    except (UserError, OSError, ValueError) as e:
        # No reporter yet: record the failure directly so the job does not look queued forever.
        if chief:
            _record_early_failure(run, redis_url, str(e))
        raise
    num_train = info.count("train")

    max_steps = optim.steps_for(spec, num_train)
    link = RedisLink(redis_url, job_id) if (redis_url and chief) else None
    reporter = Reporter(run, link, chief=chief, max_steps=max_steps, show_bar=show_bar)
    stop = stop or _Stop()
    previous_policy = keras.mixed_precision.global_policy()
    previous_handlers = {}
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is not None:
        # Restored afterwards even without handle_signals: a multi-worker job's
        # PreemptionCheckpointHandler takes SIGTERM over.
        previous_handlers[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)
    if handle_signals and threading.current_thread() is threading.main_thread():
        # SIGTERM (Kubernetes, rq) and Ctrl-C: checkpoint at the next step and stop;
        # running the job again resumes from there.
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(signum, lambda *_: stop.set("preempted"))
            previous_handlers.setdefault(signum, previous)
    result = None
    try:
        result = _train(spec, job_id, run, layout, info, dataset_dir, strategy, chief, reporter,
                        link, stop, max_steps, path, progress_interval_s)
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


def _train(spec, job_id, run, layout, info, dataset_dir, strategy, chief, reporter, link, stop,
           max_steps, path, progress_interval_s) -> TrainResult:
    num_classes, num_train = info.num_classes, info.count("train")
    mixed = spec.mixed_precision if spec.mixed_precision is not None else distribute.has_gpu()
    head_only = path == "head_only" or (path == "auto" and is_head_only(spec))
    xla = spec.xla if spec.xla is not None else default_xla(head_only)
    if path == "head_only" and not is_head_only(spec):
        raise UserError("the head-only path needs trainable_scopes within the net's heads")
    image_size = spec.resolved_image_size()
    replicas = strategy.num_replicas_in_sync
    if spec.batch_size % replicas:
        raise UserError(f"batch_size {spec.batch_size} is not divisible by {replicas} replicas")

    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(spec.seed)
    base = resolve_checkpoint(layout, spec.checkpoint)
    with strategy.scope():
        model = build_model(spec, num_classes)
        if base is not None:
            from incept.nets import load_slim_checkpoint

            report = load_slim_checkpoint(model, base, exclude_scopes=spec.exclude_scopes,
                                          ignore_missing=spec.ignore_missing_vars)
            log.info("base checkpoint %s: %s", base, report.summary())
        _set_trainable(model, spec.trainable_scopes)
        train_vars = trainable_variables_by_name(model, spec.trainable_scopes)
        if not train_vars:
            raise UserError(f"trainable_scopes {spec.trainable_scopes} select no variable")
        var_list = list(train_vars.values())
        optimizer = optim.make_optimizer(spec, num_train, mixed_precision=mixed)
        optimizer.build(var_list)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        ema = WeightAverages(train_vars, spec.moving_average_decay) if spec.moving_average_decay else None
    checkpoint = make_checkpoint(model, optimizer=optimizer, step=step_var, ema=ema)
    manager_dir = run.checkpoints if chief else Path(tempfile.mkdtemp(prefix=f"incept-{job_id}-w"))
    manager = make_manager(checkpoint, manager_dir, spec.keep_checkpoints)

    resumed_from = _restore_newest(checkpoint, run, reporter)
    if resumed_from is not None:
        log.info("job %s resumes from step %d", job_id, resumed_from)
    step = int(optimizer.iterations.numpy())
    reporter.state("running", step=step, max_steps=max_steps, resumed_from=resumed_from,
                   path="head_only" if head_only else "full")

    # Inputs. A resumed job draws a fresh example order (seeded by the step)
    # instead of skipping through the stream it had consumed.
    global_batch = spec.batch_size
    data_seed = spec.seed if step == 0 else (spec.seed * 1_000_003 + step) % (2**31 - 1)
    feature_seconds = 0.0
    if head_only:
        cache_key = features.backbone_key(spec.model_name, image_size, base, spec.seed)
        feats = features.split_features(model, layout.feature_cache, cache_key, dataset_dir, "train",
                                        image_size, spec.augmented_views if spec.augment else 0, spec.seed)
        feature_seconds = feats.compute_seconds
        log.info("head-only: features for %d images (%d views cached, %d computed in %.1f s)",
                 len(feats.labels), feats.hits, feats.computed, feats.compute_seconds)
        ds = features.feature_batches(feats, global_batch, seed=data_seed,
                                      shuffle_buffer=inputs.shuffle_buffer(num_train))
    else:
        ds = inputs.train_images(dataset_dir, info, image_size, global_batch, augment=spec.augment,
                                 seed=data_seed)
    ds = ds.with_options(inputs.shard_options())
    iterator = iter(strategy.experimental_distribute_dataset(ds))

    net = __import__("incept.nets", fromlist=["net_info"]).net_info(spec.model_name)
    logits_layer = model.get_layer(net.head_layers[0])
    aux_layer = next((model.get_layer(n) for n in net.head_layers[1:]
                      if any(layer.name == n for layer in model.layers)), None)
    dropout = model.get_layer(net.dropout_layer)
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype

    def forward(x, training):
        if not head_only:
            return model(x, training=training)
        out = {"logits": logits_layer(dropout(tf.cast(x["pre_logits"], compute_dtype),
                                              training=training))}
        if aux_layer is not None and "aux_pre_logits" in x:
            out["aux_logits"] = aux_layer(tf.cast(x["aux_pre_logits"], compute_dtype))
        return out

    kernels = [v for n, v in train_vars.items() if n.endswith("/weights")]

    def losses(outputs, labels):
        onehot = tf.one_hot(labels, num_classes)
        per_example = keras.losses.categorical_crossentropy(
            onehot, tf.cast(outputs["logits"], tf.float32), from_logits=True,
            label_smoothing=spec.label_smoothing)
        total = per_example
        if "aux_logits" in outputs and spec.aux_loss_weight:
            total = total + spec.aux_loss_weight * keras.losses.categorical_crossentropy(
                onehot, tf.cast(outputs["aux_logits"], tf.float32), from_logits=True,
                label_smoothing=spec.label_smoothing)
        loss = tf.nn.compute_average_loss(total, global_batch_size=global_batch)
        if spec.weight_decay and kernels:
            # slim's l2_regularizer: weight_decay * sum(w^2) / 2, once across replicas.
            loss += spec.weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(k, tf.float32))
                                                  for k in kernels]) / replicas
        return loss

    def compute_gradients(x, labels):
        with tf.GradientTape() as tape:
            loss = losses(forward(x, training=True), labels)
            scaled = optimizer.scale_loss(loss) if mixed else loss
        return loss, tape.gradient(scaled, var_list)

    if xla:
        # XLA compiles the forward and backward pass only; without it the step
        # stays one graph, which Grappler optimizes as a whole.
        compute_gradients = tf.function(compute_gradients, jit_compile=True)

    def replica_step(x, labels):
        loss, grads = compute_gradients(x, labels)
        optimizer.apply_gradients(zip(grads, var_list, strict=True))
        return loss

    @tf.function
    def train_steps(it, n):
        # n steps in one call (Keras's steps_per_execution): one Python round trip
        # for many small steps. n is a tensor, so every n shares one trace.
        loss = tf.constant(0.0)
        for _ in tf.range(n):
            x, labels = next(it)
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM,
                                   strategy.run(replica_step, args=(x, labels)), axis=None)
            if ema is not None:
                ema.update(tf.cast(optimizer.iterations, tf.int64) - 1)
        return loss

    saved: list[int] = []
    last_saved = [resumed_from]  # on every worker (the chief's ``saved`` lists only its own)

    def save(step: int) -> None:
        step_var.assign(step)
        manager.save(checkpoint_number=step)
        last_saved[0] = step
        if chief:
            saved.append(step)
            reporter.checkpoint(step)
        else:
            # Every worker takes part in saving; only the chief's copy is kept.
            shutil.rmtree(manager_dir, ignore_errors=True)

    if chief and step == 0:
        sample = (inputs.train_images(dataset_dir, info, image_size, 4, augment=spec.augment,
                                      seed=spec.seed) if head_only else ds)
        reporter.images(next(iter(sample.take(1)))[0])

    preemption, scratch = None, None
    multi_worker = distribute.is_multi_worker(strategy)
    steps_per_call = 1  # the first call traces; later ones follow LOOP_SECONDS
    if multi_worker and threading.current_thread() is threading.main_thread():
        # A SIGTERM to one worker must stop all of them at the same step: a worker
        # that stopped alone would leave the others waiting in the next collective.
        preemption, scratch = _cluster_preemption_handler(strategy, lambda: save(step))
    handed_over = False

    t_start = time.monotonic()
    last_save_t, last_report_t = t_start, t_start
    report_step, report_images_t = step, t_start
    images_per_sec, loss_value = 0.0, float("nan")
    steps_per_epoch = num_train / global_batch
    steady_start_step, steady_t, save_seconds = None, 0.0, 0.0
    while step < max_steps:
        if link is not None and link.cancel_requested.is_set():
            stop.set("cancelled")
        if stop.event.is_set():
            if preemption is None:
                break
            if not handed_over:
                # A cancel, Ctrl-C or a SIGTERM during set-up: the whole cluster
                # stops and saves, through the handler's own SIGTERM path.
                handed_over = True
                signal.raise_signal(signal.SIGTERM)
        n = min(steps_per_call, max_steps - step)
        if spec.checkpoint_every_steps:
            n = min(n, spec.checkpoint_every_steps - step % spec.checkpoint_every_steps)
        # The loss stays a tensor (no host sync) except when reported.
        call_t = time.monotonic()
        n_tensor = tf.constant(n, tf.int64)
        if preemption is None:
            loss_tensor = train_steps(iterator, n_tensor)
        else:
            try:
                loss_tensor = preemption.run(train_steps, iterator, n_tensor)
            except _ClusterPreempted:  # every worker saved at this step
                stop.set("preempted")
                break
        step += n
        now = time.monotonic()
        if steady_start_step is not None and not multi_worker:
            # Aim each call at LOOP_SECONDS, so a stop or cancel is still seen
            # promptly. Multi-worker calls stay at one step: every worker must
            # run the same steps per call, and their clocks differ.
            per_step = (now - call_t) / n
            steps_per_call = max(1, min(MAX_STEPS_PER_CALL, int(LOOP_SECONDS / max(per_step, 1e-6))))
        due = (spec.checkpoint_every_steps and step % spec.checkpoint_every_steps == 0) or (
            spec.checkpoint_every_seconds and now - last_save_t >= spec.checkpoint_every_seconds)
        if steady_start_step is None:
            steady_start_step, steady_t, save_seconds = step, now, 0.0
        if due and step < max_steps:
            save(step)
            last_save_t = time.monotonic()
            save_seconds += last_save_t - now
        if now - last_report_t >= progress_interval_s or step == max_steps:
            loss_value = float(loss_tensor)
            if not math.isfinite(loss_value):
                raise UserError(f"loss became {loss_value} at step {step}; lower the learning rate")
            images_per_sec = (step - report_step) * global_batch / max(now - report_images_t, 1e-9)
            eta = (max_steps - step) * global_batch / max(images_per_sec, 1e-9)
            reporter.progress(step=step, epoch=step / steps_per_epoch, loss=loss_value,
                              learning_rate=optim.current_learning_rate(optimizer),
                              images_per_sec=images_per_sec, eta_s=eta)
            last_report_t, report_step, report_images_t = now, step, now

    steady = 0.0
    if steady_start_step is not None and step > steady_start_step:
        elapsed = time.monotonic() - steady_t - save_seconds
        steady = (step - steady_start_step) * global_batch / max(elapsed, 1e-9)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    if last_saved[0] != step:
        save(step)
    state = {"preempted": "preempted", "cancelled": "cancelled"}.get(stop.reason, "succeeded")
    result = TrainResult(job_id=job_id, state=state, step=step, max_steps=max_steps,
                         path="head_only" if head_only else "full", resumed_from=resumed_from,
                         checkpoints=saved, images_per_sec=images_per_sec,
                         steady_images_per_sec=steady,
                         feature_seconds=feature_seconds)
    log.info(json.dumps({"event": "done", "job_id": job_id, "state": state, "step": step,
                         "worker": distribute.worker_index(strategy),
                         "weights_sha256": weights_digest(var_list)}))
    return result
