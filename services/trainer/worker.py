"""``incept trainer``: an rq worker on the queues ``train`` and ``datasets``;
``incept converter``: one on ``datasets`` only (on Kubernetes, where training
runs as Jobs and nothing else would convert uploaded datasets).

On SIGTERM (Kubernetes, ``incept down``) the worker forwards it to the job's
work horse, whose trainer writes a checkpoint and queues a resume request, so
a stopped worker loses no training."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal

from rq import Worker

from incept.queues import DATASETS_QUEUE, SERIALIZER, TRAIN_QUEUE, connect
from incept.settings import get_settings

# The rq queues each worker command consumes (the wiring test checks that every
# deployment runs a consumer for every queue something enqueues to).
CONSUMES = {"trainer": (TRAIN_QUEUE, DATASETS_QUEUE), "converter": (DATASETS_QUEUE,)}


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


def add_converter_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)


def _work(args: argparse.Namespace, command: str) -> int:
    settings = get_settings()
    settings.layout.ensure()
    conn = connect(args.redis_url or settings.redis_url, timeout_s=30)
    worker = TrainerWorker(list(CONSUMES[command]), connection=conn, name=args.name,
                           serializer=SERIALIZER)
    worker.work(burst=args.burst, with_scheduler=False)
    return 0


def run(args: argparse.Namespace) -> int:
    return _work(args, "trainer")


def run_converter(args: argparse.Namespace) -> int:
    return _work(args, "converter")
