"""rq job functions of the trainer worker (queues ``train`` and ``datasets``).
Plain functions named by import path in incept.queues."""

from __future__ import annotations

import logging

from incept.settings import get_settings

log = logging.getLogger(__name__)


def run_training(job_id: str) -> dict:
    """Train an already-submitted job (its spec at runs/<job_id>/spec.json).

    Preempted (SIGTERM forwarded by the worker): the checkpoint is written and
    a resume request is queued, which the next worker picks up."""
    from dataclasses import asdict

    from incept.training.trainer import train

    settings = get_settings()
    result = train(job_id, settings.layout.ensure(), redis_url=settings.redis_url)
    if result.state == "preempted":
        from incept.queues import connect, enqueue_training

        enqueue_training(connect(settings.redis_url), job_id, resume_step=result.step)
    return asdict(result)


def convert_dataset(name: str, source_dir: str) -> dict:
    """Convert a folder of class folders (inside the data root) into datasets/<name>."""
    from incept.data.convert import convert
    from incept.errors import UserError

    layout = get_settings().layout.ensure()
    try:
        src = layout.resolve_inside(source_dir)
        out = layout.dataset(name)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        return convert(src, out, progress=_conversion_progress()).to_dict()
    finally:
        _remove_upload(layout, src)


def _remove_upload(layout, src) -> None:
    """An upload's unpacked folder is used once: converted or not, it goes (an
    upload may be GBs; a failed one is uploaded again)."""
    import shutil

    uploads = layout.uploads.resolve()
    if uploads in src.parents:
        shutil.rmtree(uploads / src.relative_to(uploads).parts[0], ignore_errors=True)


def _conversion_progress():
    """Report (done, total) in the rq job's meta, for the page, at most twice a second."""
    import time

    from rq import get_current_job

    job, last = get_current_job(), [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if job is None or (now - last[0] < 0.5 and done < total):
            return
        last[0] = now
        job.meta["progress"] = {"done": done, "total": total}
        try:
            job.save_meta()
        except Exception as e:  # progress is a nicety; the conversion goes on
            log.warning("cannot report conversion progress: %s", e)
    return report
