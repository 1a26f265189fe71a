"""``incept evaluator``: an rq worker on the ``eval`` queue plus the reconciler.

It is a ``SimpleWorker`` (no fork per request): TensorFlow is imported once and
stays warm, so a request starts in milliseconds. A plain ``rq worker eval``
with the project's settings in the environment also works (without the
reconciler).

The process outlives Redis outages. rq's work loop ends when Redis goes away
in the middle of a request (it cannot record the outcome); ``run`` then logs
one line, waits for Redis with capped exponential backoff, retires the old
worker's registration and starts a fresh worker. The interrupted request is
done again by the reconciler (its lock has expired, its start is old), and a
result that reached the disk but not Redis is published by the reconciler or
by that redo (``services.evaluator.evaluate``). Only SIGINT/SIGTERM (or
``--burst``) end the process."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
import time

import redis
from rq import SimpleWorker

from incept.queues import EVAL_QUEUE

log = logging.getLogger(__name__)

# The rq queues the command consumes (see services.trainer.worker.CONSUMES).
CONSUMES = {"evaluator": (EVAL_QUEUE,)}

FIRST_WAIT_S = 0.5
MAX_WAIT_S = 10.0


class EvaluatorWorker(SimpleWorker):
    """rq's SimpleWorker that remembers whether it was asked to stop (else an
    ended work loop means Redis went away)."""

    stop_asked = False

    def request_stop(self, signum, frame):
        self.stop_asked = True
        super().request_stop(signum, frame)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true",
                        help="exit when the queue is empty (after one reconciler pass)")
    parser.add_argument("--no-reconciler", action="store_true",
                        help="do not scan runs/ for checkpoints that were never evaluated")
    parser.add_argument("--name", help="rq worker name (default: rq's)")


def wait_for_redis(conn: redis.Redis, stopping: threading.Event) -> bool:
    """Ping until Redis answers (True) or a stop signal arrives (False)."""
    wait_s = FIRST_WAIT_S
    while not stopping.is_set():
        try:
            conn.ping()
            return True
        except (redis.ConnectionError, redis.TimeoutError):
            stopping.wait(wait_s)
            wait_s = min(2 * wait_s, MAX_WAIT_S)
    return False


def run(args: argparse.Namespace) -> int:
    from incept.queues import SERIALIZER, connect, rq_queue
    from incept.settings import get_settings
    from services.evaluator.reconciler import Reconciler, reconcile

    settings = get_settings()
    layout = settings.layout.ensure()
    conn = connect(settings.redis_url)
    # Warm up: the first request should not pay for importing TensorFlow.
    import incept.checkpoints  # noqa: F401
    import incept.data.dataset  # noqa: F401
    import incept.evaluation.metrics  # noqa: F401
    import incept.evaluation.open_set  # noqa: F401
    import incept.export  # noqa: F401
    import incept.training.reporting  # noqa: F401
    import services.evaluator.evaluate  # noqa: F401

    reconciler = None
    if not args.no_reconciler:
        if args.burst:
            reconcile(layout, conn)
        else:
            reconciler = Reconciler(layout, connect(settings.redis_url),
                                    settings.reconcile_interval_s)
            reconciler.start()
    log.info("evaluator: data root %s, queue %r, reconcile every %.0f s", layout.root,
             EVAL_QUEUE, settings.reconcile_interval_s)
    try:
        while True:
            worker = EvaluatorWorker([rq_queue(conn, q) for q in CONSUMES["evaluator"]],
                                     connection=conn, name=args.name, serializer=SERIALIZER)
            try:
                worker.work(with_scheduler=True, burst=args.burst)
                if args.burst or worker.stop_asked:
                    return 0
                reason = "rq's work loop ended unexpectedly, see its log above"
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if worker.stop_asked:
                    return 0
                reason = str(e)
            if not _recover(conn, worker, reason):
                return 0
    finally:
        if reconciler is not None:
            reconciler.stop()


def _recover(conn: redis.Redis, worker: EvaluatorWorker, reason: str) -> bool:
    """Wait for Redis after the worker lost it; False if a stop signal came first."""
    stopping = threading.Event()
    # rq's handlers belong to the old worker (they would write to Redis).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait(FIRST_WAIT_S)  # never a busy loop, whatever ended the worker
    log.warning("evaluator: lost Redis (%s); waiting for it, then starting a fresh worker",
                reason)
    lost_at = time.monotonic()
    if not wait_for_redis(conn, stopping):
        log.info("evaluator: stopping on request while waiting for Redis")
        return False
    # Frees the worker's name (and its entry in rq's worker list) for the next one. If
    # Redis is gone again, the next worker's start fails and we wait once more.
    with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
        worker.register_death()
    log.info("evaluator: Redis is back after %.0f s; starting a fresh worker",
             time.monotonic() - lost_at)
    return not stopping.is_set()
