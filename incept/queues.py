"""Queue names, Redis connections and the requests that cross them.

Jobs are plain functions named by import path, so a producer (the gateway, the
trainer) never imports the consumer's code (and never TensorFlow)."""

from __future__ import annotations

import contextlib

import psutil
import redis
import redis.asyncio
from rq import Queue, Retry, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from incept.jobstate import TERMINAL_STATES, JobState

TRAIN_QUEUE = "train"
EVAL_QUEUE = "eval"
DATASETS_QUEUE = "datasets"

TRAIN_FUNC = "services.trainer.jobs.run_training"
EVAL_FUNC = "services.evaluator.jobs.evaluate_checkpoint"
PREPARE_FUNC = "services.evaluator.jobs.prepare_job"
CONVERT_FUNC = "services.trainer.jobs.convert_dataset"

# A training job may run for days; rq's default timeout (180 s) would kill it.
TRAIN_TIMEOUT_S = 7 * 24 * 3600
EVAL_TIMEOUT_S = 3600

# Requests and their results cross Redis as JSON, never as pickles: whoever can
# write to Redis still cannot make a worker unpickle (and so run) code. Every
# queue, fetch and worker uses this one serializer.
SERIALIZER = JSONSerializer

_PENDING = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


def connect(url: str, *, timeout_s: float = 5.0) -> redis.Redis:
    # rq stores pickled payloads: the connection must not decode responses.
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                health_check_interval=30)


def rq_queue(conn: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=conn, serializer=SERIALIZER)


def fetch_request(conn: redis.Redis, request_id: str) -> Job:
    """The rq job of a request; raises rq's NoSuchJobError."""
    return Job.fetch(request_id, connection=conn, serializer=SERIALIZER)


def connect_async(url: str, *, timeout_s: float = 5.0) -> redis.asyncio.Redis:
    """An asyncio connection (the gateway's live event streams), same timeouts."""
    return redis.asyncio.Redis.from_url(url, socket_timeout=timeout_s,
                                        socket_connect_timeout=timeout_s, health_check_interval=30)


def request_id(kind: str, *parts: object) -> str:
    """An rq job id for a request. rq 3 accepts only ``[A-Za-z0-9_-]`` in ids while
    names may hold '.', so each part is escaped injectively ('_' -> '__', '.' -> '_d')
    and the parts are joined with '-' (the last part of eval ids is the integer step)."""
    return "-".join([kind, *(str(p).replace("_", "__").replace(".", "_d") for p in parts)])


def request_part(escaped: str) -> str:
    """Undo ``request_id``'s escaping of one part."""
    out, i = [], 0
    while i < len(escaped):
        if escaped[i] == "_" and i + 1 < len(escaped):
            out.append("." if escaped[i + 1] == "d" else "_")
            i += 2
        else:
            out.append(escaped[i])
            i += 1
    return "".join(out)


def eval_request_id(job_id: str, step: int) -> str:
    return request_id("eval", job_id, int(step))


def train_request_id(job_id: str) -> str:
    return request_id("train", job_id)


def conversion_request_id(name: str) -> str:
    return request_id("convert", name)


def request_status(conn: redis.Redis, request_id: str) -> JobStatus | None:
    try:
        return fetch_request(conn, request_id).get_status()
    except NoSuchJobError:
        return None


def is_pending(conn: redis.Redis, request_id: str) -> bool:
    return request_status(conn, request_id) in _PENDING


def enqueue_eval(conn: redis.Redis, job_id: str, step: int) -> bool:
    """Ask for an evaluation of (job, step). A request that is already pending or
    done is left alone, so duplicates are no-ops. Returns whether one was queued."""
    rid = eval_request_id(job_id, step)
    if request_status(conn, rid) not in (None, JobStatus.FAILED, JobStatus.CANCELED,
                                         JobStatus.STOPPED):
        return False
    rq_queue(conn, EVAL_QUEUE).enqueue(
        EVAL_FUNC, job_id, int(step), job_id=rid, job_timeout=EVAL_TIMEOUT_S,
        retry=Retry(max=3, interval=[2, 10, 30]), result_ttl=7 * 24 * 3600,
        failure_ttl=7 * 24 * 3600, description=f"evaluate {job_id} step {step}",
    )
    return True


def enqueue_prepare(conn: redis.Redis, job_id: str) -> bool:
    """Ask an evaluator to get a head-only job ready before its first
    checkpoint: the model built, the export's serving function traced and its
    graph written, the cached features read and the open-set score fitted
    (those once the cache is complete), so the first checkpoint pays for none
    of it. Queued on ``eval`` ahead of the job's evaluation requests; a no-op
    when one is pending. Returns whether one was queued."""
    rid = request_id("prepare", job_id)
    if request_status(conn, rid) in _PENDING:
        return False
    rq_queue(conn, EVAL_QUEUE).enqueue(
        PREPARE_FUNC, job_id, job_id=rid, job_timeout=EVAL_TIMEOUT_S, result_ttl=3600,
        failure_ttl=7 * 24 * 3600, description=f"prepare the evaluation of {job_id}")
    return True


def enqueue_training(conn: redis.Redis, job_id: str, resume_step: int | None = None) -> Job:
    """Ask for a job's training: the first request (one per job), or a preempted
    job's request to resume from the checkpoint of ``resume_step`` (one per stop,
    so it never collides with the request still finishing)."""
    if resume_step is None:
        rid, description = train_request_id(job_id), f"train {job_id}"
    else:
        rid = request_id("train", job_id, "resume", int(resume_step))
        description = f"resume {job_id} at step {resume_step}"
    return rq_queue(conn, TRAIN_QUEUE).enqueue(
        TRAIN_FUNC, job_id, job_id=rid, job_timeout=TRAIN_TIMEOUT_S,
        result_ttl=30 * 24 * 3600, failure_ttl=30 * 24 * 3600, description=description,
    )


def resume_interrupted_jobs(conn: redis.Redis) -> list[str]:
    """Queue again every training job that is not finished and has no request
    waiting in the queue or running on a live worker (its worker was killed
    before it could queue a resume request): the trainer resumes it from its
    newest checkpoint. Call before a trainer worker starts. Jobs of another
    launcher (Kubernetes) are not ours to restart."""
    queue = rq_queue(conn, TRAIN_QUEUE)
    covered = {job.args[0] for job in queue.jobs
               if job is not None and job.func_name == TRAIN_FUNC and job.args}
    for rid in StartedJobRegistry(queue=queue).get_job_ids():
        with contextlib.suppress(NoSuchJobError):
            job = fetch_request(conn, rid)
            if job.args and _request_has_live_worker(conn, job):
                covered.add(job.args[0])
    jobs, resumed = JobState(conn), []
    for job_id in jobs.list_ids():
        info = jobs.get(job_id) or {}
        launcher = info.get("launcher")
        if info.get("state") in TERMINAL_STATES or job_id in covered:
            continue
        if isinstance(launcher, dict) and launcher.get("launcher") not in (None, "local"):
            continue
        with contextlib.suppress(NoSuchJobError):
            fetch_request(conn, train_request_id(job_id)).delete()
        enqueue_training(conn, job_id)
        resumed.append(job_id)
    return resumed


def _request_has_live_worker(conn: redis.Redis, request: Job) -> bool:
    name = getattr(request, "worker_name", None)
    if not name:
        return False
    return any(worker.name == name and psutil.pid_exists(worker.pid or 0)
               for worker in Worker.all(connection=conn))


def enqueue_conversion(conn: redis.Redis, name: str, source_dir: str) -> Job:
    return rq_queue(conn, DATASETS_QUEUE).enqueue(
        CONVERT_FUNC, name, source_dir, job_id=conversion_request_id(name), job_timeout=6 * 3600,
        result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600, description=f"convert {name}",
    )
