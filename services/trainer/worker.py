"""``incept trainer``: an rq worker on the queues ``train`` and ``datasets``.

On SIGTERM (Kubernetes, ``incept down``) the worker forwards it to the job's
work horse, whose trainer writes a checkpoint and queues a resume request, so
a stopped worker loses no training."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal

from rq import Worker

from incept.queues import DATASETS_QUEUE, TRAIN_QUEUE, connect
from incept.settings import get_settings


class TrainerWorker(Worker):
    def request_stop(self, signum, frame):
        horse = getattr(self, "horse_pid", 0)
        if horse:
            with contextlib.suppress(ProcessLookupError):
                os.kill(horse, signal.SIGTERM)
        return super().request_stop(signum, frame)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="default: INCEPT_REDIS_URL")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--name", help="worker name")


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    settings.layout.ensure()
    conn = connect(args.redis_url or settings.redis_url, timeout_s=30)
    worker = TrainerWorker([TRAIN_QUEUE, DATASETS_QUEUE], connection=conn, name=args.name)
    worker.work(burst=args.burst, with_scheduler=False)
    return 0
