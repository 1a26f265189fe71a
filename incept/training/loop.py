"""The training loop: calls the compiled step until ``max_steps`` or a stop,
saves checkpoints every N steps and/or seconds (and a final one), reports
progress and throughput, and under MultiWorkerMirroredStrategy stops every
worker at the same step when any one of them gets SIGTERM."""

from __future__ import annotations

import logging
import math
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tensorflow as tf

from incept.errors import UserError
from incept.spec import JobSpec
from incept.training import distribute, optim
from incept.training.redis_link import RedisLink
from incept.training.reporting import Reporter
from incept.training.state import TrainState

log = logging.getLogger("incept.trainer")

# Steps per call of the compiled train loop are chosen so a call lasts about
# this long: small steps (a head, a small net) pay one Python round trip per
# call instead of one per step, while a stop or cancel waits at most this.
LOOP_SECONDS = 0.2
MAX_STEPS_PER_CALL = 100


class Stop:
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


@dataclass
class _Throughput:
    """Images per second since the last report, and steady: from the end of the
    first (tracing) call, checkpoint saves excluded."""

    batch: int
    report_step: int
    report_t: float
    steady_step: int | None = None
    steady_t: float = 0.0
    excluded_s: float = 0.0

    def first_call_done(self, step: int, now: float) -> None:
        if self.steady_step is None:
            self.steady_step, self.steady_t, self.excluded_s = step, now, 0.0

    def since_report(self, step: int, now: float) -> float:
        per_sec = (step - self.report_step) * self.batch / max(now - self.report_t, 1e-9)
        self.report_step, self.report_t = step, now
        return per_sec

    def steady(self, step: int) -> float:
        if self.steady_step is None or step <= self.steady_step:
            return 0.0
        elapsed = time.monotonic() - self.steady_t - self.excluded_s
        return (step - self.steady_step) * self.batch / max(elapsed, 1e-9)


@dataclass
class TrainLoop:
    """Steps a built job from ``step`` to ``max_steps`` (or a stop)."""

    spec: JobSpec
    state: TrainState
    strategy: tf.distribute.Strategy
    train_steps: Callable  # make_train_step's train_steps(iterator, n)
    iterator: object
    reporter: Reporter
    link: RedisLink | None
    stop: Stop
    chief: bool
    step: int
    max_steps: int
    num_train: int
    last_saved: int | None  # on every worker (the chief's ``saved`` lists only its own)
    progress_interval_s: float = 5.0
    saved: list[int] = field(default_factory=list)
    images_per_sec: float = 0.0

    def __post_init__(self) -> None:
        self.multi_worker = distribute.is_multi_worker(self.strategy)
        self.steps_per_call = 1  # the first call traces; later ones follow LOOP_SECONDS
        self.preemption, self.scratch, self.handed_over = None, None, False

    def save(self, step: int) -> None:
        self.state.step_var.assign(step)
        self.state.manager.save(checkpoint_number=step)
        self.last_saved = step
        if self.chief:
            self.saved.append(step)
            self.reporter.checkpoint(step)
        else:
            # Every worker takes part in saving; only the chief's copy is kept.
            shutil.rmtree(self.state.manager_dir, ignore_errors=True)

    def run(self) -> float:
        """Train; returns the steady images per second (see ``_Throughput``)."""
        if self.multi_worker and threading.current_thread() is threading.main_thread():
            # A SIGTERM to one worker must stop all of them at the same step: a worker
            # that stopped alone would leave the others waiting in the next collective.
            self.preemption, self.scratch = _cluster_preemption_handler(
                self.strategy, lambda: self.save(self.step))
        start = time.monotonic()
        self.last_save_t, self.last_report_t = start, start
        self.throughput = _Throughput(self.spec.batch_size, self.step, start)
        while self.step < self.max_steps and not self._stopping():
            n = self._steps_this_call()
            call_t = time.monotonic()
            loss = self._call(n)
            if loss is None:  # every worker saved at this step
                break
            self.step += n
            self._after_call(n, call_t, loss)
        steady = self.throughput.steady(self.step)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        if self.last_saved != self.step:
            self.save(self.step)
        return steady

    def _stopping(self) -> bool:
        if self.link is not None and self.link.cancel_requested.is_set():
            self.stop.set("cancelled")
        if not self.stop.event.is_set():
            return False
        if self.preemption is None:
            return True
        if not self.handed_over:
            # A cancel, Ctrl-C or a SIGTERM during set-up: the whole cluster
            # stops and saves, through the handler's own SIGTERM path.
            self.handed_over = True
            signal.raise_signal(signal.SIGTERM)
        return False

    def _steps_this_call(self) -> int:
        n = min(self.steps_per_call, self.max_steps - self.step)
        every = self.spec.checkpoint_every_steps
        if every:
            n = min(n, every - self.step % every)
        return n

    def _call(self, n: int):
        """The last step's loss, a tensor (no host sync); None once the cluster
        has saved its preemption checkpoint."""
        n_tensor = tf.constant(n, tf.int64)
        if self.preemption is None:
            return self.train_steps(self.iterator, n_tensor)
        try:
            return self.preemption.run(self.train_steps, self.iterator, n_tensor)
        except _ClusterPreempted:
            self.stop.set("preempted")
            return None

    def _after_call(self, n: int, call_t: float, loss) -> None:
        now = time.monotonic()
        if self.throughput.steady_step is not None and not self.multi_worker:
            # Aim each call at LOOP_SECONDS, so a stop or cancel is still seen
            # promptly. Multi-worker calls stay at one step: every worker must
            # run the same steps per call, and their clocks differ.
            per_step = (now - call_t) / n
            self.steps_per_call = max(1, min(MAX_STEPS_PER_CALL, int(LOOP_SECONDS / max(per_step, 1e-6))))
        spec, step = self.spec, self.step
        due = (spec.checkpoint_every_steps and step % spec.checkpoint_every_steps == 0) or (
            spec.checkpoint_every_seconds and now - self.last_save_t >= spec.checkpoint_every_seconds)
        self.throughput.first_call_done(step, now)
        if due and step < self.max_steps:
            self.save(step)
            self.last_save_t = time.monotonic()
            self.throughput.excluded_s += self.last_save_t - now
        if now - self.last_report_t >= self.progress_interval_s or step == self.max_steps:
            self._report(loss, now)

    def _report(self, loss, now: float) -> None:
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise UserError(f"loss became {loss_value} at step {self.step}; lower the learning rate")
        self.images_per_sec = self.throughput.since_report(self.step, now)
        batch = self.spec.batch_size
        eta = (self.max_steps - self.step) * batch / max(self.images_per_sec, 1e-9)
        self.reporter.progress(step=self.step, epoch=self.step / (self.num_train / batch),
                               loss=loss_value,
                               learning_rate=optim.current_learning_rate(self.state.optimizer),
                               images_per_sec=self.images_per_sec, eta_s=eta)
        self.last_report_t = now

