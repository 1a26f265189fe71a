"""Where training progress goes: the Redis job hash and event stream (through
:class:`~incept.training.redis_link.RedisLink`), ``runs/<id>/status.json``
(atomic, survives Redis), TensorBoard under ``runs/<id>/train/``, one
structured log line per interval, and a rich progress bar on a terminal."""

from __future__ import annotations

import json
import logging
import sys
import time

import tensorflow as tf

from incept.fsutil import write_json_atomic
from incept.layout import RunLayout
from incept.training.redis_link import RedisLink

log = logging.getLogger("incept.trainer")


def write_scalar(tag: str, value: float, step: int) -> None:
    tf.summary.scalar(tag, float(value), step=step)


def write_images(tag: str, images, step: int) -> None:
    """``images`` float [N, H, W, 3] in [0, 1]."""
    tf.summary.image(tag, tf.clip_by_value(images, 0.0, 1.0), step=step,
                     max_outputs=images.shape[0] or 3)


class Reporter:
    def __init__(self, run: RunLayout, link: RedisLink | None, *, chief: bool, max_steps: int,
                 show_bar: bool | None = None):
        self.run = run
        self.link = link
        self.chief = chief
        self.max_steps = max_steps
        self.status: dict = {"job_id": run.job_id, "max_steps": max_steps}
        self.writer = tf.summary.create_file_writer(str(run.train_logs)) if chief else None
        self._bar = None
        if chief and (sys.stderr.isatty() if show_bar is None else show_bar):
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total} {task.fields[info]}"),
                                 TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task(run.job_id, total=max_steps, info="")
            self._bar.start()

    def _mirror(self, **fields) -> None:
        self.status.update(fields, updated_at=time.time())
        if self.chief:
            # Rewritten at every report and mirrored in Redis: atomic, but not
            # fsynced (that would queue behind the checkpoints' write-back).
            write_json_atomic(self.run.status, self.status, durable=False)

    def state(self, state: str, **fields) -> None:
        if not self.chief:
            return
        self._mirror(state=state, **fields)
        log.info(json.dumps({"event": "state", "job_id": self.run.job_id, "state": state, **fields}))
        if self.link:
            self.link.update(state=state, **fields)
            self.link.emit("state", {"state": state, **fields})

    def update(self, **fields) -> None:
        if not self.chief:
            return
        self._mirror(**fields)
        if self.link:
            self.link.update(**fields)

    def progress(self, *, step: int, epoch: float, loss: float, learning_rate: float,
                 images_per_sec: float, eta_s: float) -> None:
        if not self.chief:
            return
        data = {"step": step, "loss": round(loss, 6), "lr": learning_rate,
                "images_per_sec": round(images_per_sec, 2), "eta_s": round(eta_s, 1)}
        self._mirror(step=step, epoch=round(epoch, 4), loss=loss, learning_rate=learning_rate,
                     images_per_sec=images_per_sec, eta_s=eta_s)
        log.info(json.dumps({"event": "progress", "job_id": self.run.job_id, "epoch": round(epoch, 3),
                             "max_steps": self.max_steps, **data}))
        if self.link:
            self.link.update(step=step, max_steps=self.max_steps, epoch=epoch, loss=loss,
                             learning_rate=learning_rate, images_per_sec=images_per_sec, eta_s=eta_s)
            self.link.emit("progress", data)
        if self.writer is not None:
            with self.writer.as_default(step=step):
                write_scalar("loss", loss, step)
                write_scalar("learning_rate", learning_rate, step)
                write_scalar("images_per_sec", images_per_sec, step)
            self.writer.flush()
        if self._bar:
            self._bar.update(self._task, completed=step, info=f"loss {loss:.4f} lr {learning_rate:.2g}")

    def phase(self, phase: str) -> None:
        """The job's phase (``incept.jobstate.PHASES``): status.json, the Redis
        hash and a "phase" event."""
        if not self.chief:
            return
        self._mirror(phase=phase)
        if self.link:
            self.link.advance_phase(phase)

    def features(self, *, done: int, total: int, images_per_sec: float, eta_s: float) -> None:
        """Progress of the feature pass: a "features" event, the hash and status.json
        field ``features`` {done, total, images_per_sec, eta_s}."""
        if not self.chief:
            return
        data = {"done": done, "total": total, "images_per_sec": round(images_per_sec, 2),
                "eta_s": round(eta_s, 1)}
        self._mirror(features=data)
        log.info(json.dumps({"event": "features", "job_id": self.run.job_id, **data}))
        if self.link:
            self.link.update(features=data)
            self.link.emit("features", data)
        if self._bar:
            self._bar.update(self._task, info=f"features {done}/{total} {images_per_sec:.1f} img/s")

    def images(self, images) -> None:
        """A few training inputs (float in [-1, 1]) as TensorBoard images."""
        if self.writer is None:  # only the chief writes summaries
            return
        with self.writer.as_default(step=0):
            write_images("inputs", (tf.cast(images[:4], tf.float32) + 1.0) / 2.0, 0)
        self.writer.flush()

    def checkpoint(self, step: int) -> None:
        if not self.chief:
            return
        self._mirror(last_checkpoint_step=step)
        log.info(json.dumps({"event": "checkpoint", "job_id": self.run.job_id, "step": step}))
        if self.link:
            self.link.update(last_checkpoint_step=step)
            self.link.emit("checkpoint", {"step": step})
            self.link.request_eval(step)

    def error(self, message: str) -> None:
        log.error(message)
        if self.chief and self.link:
            self.link.emit("error", {"message": message})

    def close(self) -> None:
        if self._bar:
            self._bar.stop()
        if self.writer:
            self.writer.close()


class FeaturePassProgress:
    """Counts the feature pass's images and reports them at most every
    ``interval_s`` (and at the start and end): the ``progress`` argument of
    ``incept.training.features.cached_features``."""

    def __init__(self, reporter: Reporter, interval_s: float):
        self.reporter = reporter
        self.interval_s = interval_s
        self.total = self.done = 0
        self._t0 = self._last = 0.0

    def start(self, total: int) -> None:
        self.total, self.done = int(total), 0
        self._t0 = self._last = time.monotonic()
        if total:
            self.reporter.features(done=0, total=self.total, images_per_sec=0.0, eta_s=0.0)

    def __call__(self, images: int) -> None:
        self.done += int(images)
        now = time.monotonic()
        if now - self._last < self.interval_s and self.done < self.total:
            return
        self._last = now
        rate = self.done / max(now - self._t0, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        self.reporter.features(done=self.done, total=self.total, images_per_sec=rate, eta_s=eta)
