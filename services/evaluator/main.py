"""``incept evaluator``: an rq worker on the ``eval`` queue plus the reconciler.

It is a ``SimpleWorker`` (no fork per request): TensorFlow is imported once and
stays warm, so a request starts in milliseconds. A plain ``rq worker eval``
with the project's settings in the environment also works (without the
reconciler)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true",
                        help="exit when the queue is empty (after one reconciler pass)")
    parser.add_argument("--no-reconciler", action="store_true",
                        help="do not scan runs/ for checkpoints that were never evaluated")
    parser.add_argument("--name", help="rq worker name (default: rq's)")


def run(args: argparse.Namespace) -> int:
    from rq import Queue, SimpleWorker

    from incept.queues import EVAL_QUEUE, connect
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
    worker = SimpleWorker([Queue(EVAL_QUEUE, connection=conn)], connection=conn,
                          name=args.name)
    log.info("evaluator: data root %s, queue %r, reconcile every %.0f s", layout.root,
             EVAL_QUEUE, settings.reconcile_interval_s)
    try:
        worker.work(with_scheduler=True, burst=args.burst)
    finally:
        if reconciler is not None:
            reconciler.stop()
    return 0
