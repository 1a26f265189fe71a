"""rq job functions of the evaluator (queue ``eval``), named by import path in
``incept.queues``. Plain functions: settings, Redis and the shared volume come
from ``incept.settings``."""

from __future__ import annotations

from incept.layout import check_name
from incept.queues import connect
from incept.settings import get_settings


def evaluate_checkpoint(job_id: str, step: int) -> dict:
    """Evaluate checkpoint ``step`` of ``job_id``; bless and export it if it is the
    job's best so far. Returns a summary (rq keeps it as the request's result)."""
    from services.evaluator.evaluate import EvaluationFailed
    from services.evaluator.evaluate import evaluate_checkpoint as evaluate

    try:
        check_name(job_id, "job id")
    except ValueError as e:
        raise EvaluationFailed(str(e)) from None
    settings = get_settings()
    conn = connect(settings.redis_url)
    try:
        outcome = evaluate(settings.layout, conn, job_id, int(step),
                           keep_versions=settings.keep_versions)
        return outcome.summary()
    finally:
        conn.close()


def prepare_job(job_id: str) -> dict:
    """Get a head-only job ready before its first checkpoint (``incept.queues.enqueue_prepare``)."""
    from services.evaluator.evaluate import prepare_head_only

    check_name(job_id, "job id")
    settings = get_settings()
    return prepare_head_only(settings.layout, job_id)
