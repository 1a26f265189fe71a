"""What the gateway's routes do, without HTTP: submit and cancel jobs, look
jobs up, receive a dataset's upload, the state of its conversion, list datasets
and models (a job's live events are in ``event_stream``). Routes import this
module (and deps, schemas, errors), never each other."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis
from rq.job import JobStatus
from starlette.concurrency import run_in_threadpool

from incept.data.dataset import DatasetInfo
from incept.errors import UserError
from incept.fsutil import write_json_atomic
from incept.jobstate import TERMINAL_STATES, JobState
from incept.layout import NAME_RE, Layout, new_job_id
from incept.queues import (
    DATASETS_QUEUE,
    conversion_request_id,
    enqueue_conversion,
    fetch_request,
    request_part,
    request_status,
    rq_queue,
)
from incept.resources import job_resource_problems
from incept.resources import limits as resource_limits
from incept.serving.backend import PredictionBackend
from incept.settings import Settings
from incept.spec import JobSpec, SpecError, parse_spec
from services.gateway import jobview, uploads
from services.gateway.archives import ExtractReport
from services.gateway.errors import ApiError, Conflict, NotFound
from services.gateway.launchers.base import Launcher
from services.gateway.slots import Slots

# -- datasets -----------------------------------------------------------------

log = logging.getLogger(__name__)


def conversion_state(conn: redis.Redis, name: str) -> tuple[str | None, str | None]:
    """(``converting``|``ready``|``failed``|None, why it failed) of a dataset's
    conversion request; None when there is none (or Redis cannot say)."""
    try:
        status = request_status(conn, conversion_request_id(name))
    except redis.RedisError:
        return None, None
    if status is None:
        return None, None
    if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        with contextlib.suppress(Exception):
            job = fetch_request(conn, conversion_request_id(name))
            result = job.latest_result()
            reason = (result.exc_string or "").strip().splitlines()[-1:] if result else []
            return "failed", (reason[0][:300] if reason else "conversion failed")
        return "failed", "conversion failed"
    if status == JobStatus.FINISHED:
        return "ready", None
    return "converting", None


def conversion_progress(conn: redis.Redis, name: str) -> dict | None:
    """(done, total) images the converter reported in its rq job's meta."""
    try:
        progress = fetch_request(conn, conversion_request_id(name)).get_meta().get("progress")
    except Exception:  # no such job (any more), or Redis away: no progress to show
        return None
    return progress if isinstance(progress, dict) else None


def dataset_info(layout: Layout, conn: redis.Redis, name: str) -> dict | None:
    """A converted dataset's summary, or its conversion's state; None if unknown."""
    path = layout.dataset(name)
    info_file = path / "dataset.json"
    if info_file.exists():
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            info = {}
        names = info.get("class_names")
        return {"name": name, "state": "ready", "class_names": names,
                "num_classes": info.get("num_classes") or (len(names) if names else None),
                "counts": info.get("counts") or info.get("num_examples"),
                "per_class": info.get("per_class"), "skipped": info.get("skipped"),
                "converted": len(info.get("converted") or []),
                "thumbnails": (info.get("thumbnails") or {}).get("samples")}
    state, error = conversion_state(conn, name)
    if state is None:
        return None
    out: dict[str, Any] = {"name": name, "state": "converting" if state == "ready" else state,
                           "error": error}
    if out["state"] == "converting":
        out["progress"] = conversion_progress(conn, name)
    return out


def _pending_dataset_names(conn: redis.Redis) -> set[str]:
    try:
        prefix = conversion_request_id("")
        return {request_part(jid.removeprefix(prefix))
                for jid in rq_queue(conn, DATASETS_QUEUE).job_ids if jid.startswith(prefix)}
    except redis.RedisError:
        return set()


def list_datasets(layout: Layout, conn: redis.Redis) -> list[dict]:
    """Converted datasets and those still being converted, by name."""
    names = set()
    if layout.datasets.is_dir():
        names |= {p.name for p in layout.datasets.iterdir() if p.is_dir() and not p.name.startswith(".")}
    names |= _pending_dataset_names(conn)
    out = []
    for name in sorted(names):
        with contextlib.suppress(ValueError):
            d = dataset_info(layout, conn, name)
            if d is not None:
                out.append(d)
    return out


async def upload_dataset(layout: Layout, conn: redis.Redis, settings: Settings, slots: Slots,
                         name: str, body: AsyncIterator[bytes]) -> ExtractReport:
    """Receive a new dataset's archive, unpack it and queue its conversion.
    Conflict when the dataset exists or another upload or conversion of it is
    under way, 429 beyond ``slots``, 507 when the volume is short of space."""
    if layout.dataset(name).exists():
        raise Conflict(f"dataset {name!r} already exists")
    with slots.slot():
        await run_in_threadpool(uploads.check_free_space, layout, settings)
        # The name is claimed before the body is read: of two uploads of one
        # name exactly one is received and converted, the other is a 409.
        claim = await run_in_threadpool(uploads.claim_name, conn, name)
        try:
            return await _receive_and_queue(layout, conn, settings, name, body)
        finally:
            await run_in_threadpool(uploads.release_name, conn, name, claim)


async def _receive_and_queue(layout: Layout, conn: redis.Redis, settings: Settings, name: str,
                             body: AsyncIterator[bytes]) -> ExtractReport:
    state, _ = await run_in_threadpool(conversion_state, conn, name)
    if state == "converting":
        raise Conflict(f"dataset {name!r} is already being converted")
    report = await uploads.receive_and_extract(body, layout, settings)
    try:
        await run_in_threadpool(enqueue_conversion, conn, name, str(report.root))
    except redis.RedisError:
        shutil.rmtree(report.extracted, ignore_errors=True)
        raise ApiError("Redis is unavailable; try again", status_code=503,
                       headers={"Retry-After": "5"}) from None
    return report


# -- jobs -----------------------------------------------------------------------


def find_job(layout: Layout, state: JobState, job_id: str, *, full: bool) -> dict:
    """The job as the API shows it; NotFound for an unknown or invalid id."""
    if not NAME_RE.fullmatch(job_id) or ".." in job_id:
        raise NotFound(f"unknown job {job_id!r}")
    job = jobview.job_summary(layout, state, job_id, full=full)
    if job is None:
        raise NotFound(f"unknown job {job_id!r}")
    return job


def submit_job(layout: Layout, state: JobState, launcher: Launcher, conn: redis.Redis,
               settings: Settings, spec: dict, idempotency_key: str | None = None) -> str:
    """Validate the spec, record the job in Redis, write the spec to the volume and
    launch it. A submission that fails leaves nothing behind (503: try again); one
    with an ``Idempotency-Key`` already seen returns that job instead of a second."""
    job_spec = parse_spec(spec)
    dataset_dir = _checked_dataset(job_spec, layout, conn)
    problems = _resource_problems(job_spec, layout, dataset_dir, settings)
    if problems:
        raise SpecError(problems)
    spec_json = job_spec.model_dump(mode="json")
    job_id = new_job_id(job_spec.dataset)
    claim = None
    if idempotency_key is not None:
        claim, earlier = _claim_submission(conn, idempotency_key, job_id, spec_json)
        if earlier is not None:
            return earlier
    run = layout.run(job_id)
    try:
        # Redis first: if it is down, nothing reaches the volume.
        state.create(job_id, spec=json.dumps(spec_json), dataset=job_spec.dataset,
                     model_name=job_spec.serving_name(), max_steps=job_spec.max_steps)
        run.root.mkdir(parents=True)
        # The spec is on the volume before anything can start the job (the contract).
        write_json_atomic(run.spec, spec_json)
        ref = launcher.launch(job_id)
    except Exception as e:
        _forget_submission(conn, state, run, claim)
        raise ApiError(f"could not submit the job: {e}", status_code=503,
                       headers={"Retry-After": "30"}) from None
    try:
        state.update(job_id, launcher=json.dumps({"launcher": launcher.name, "ref": ref}))
    except redis.RedisError as e:  # launched: the job runs, and a retry must not start another
        log.warning("job %s launched, but Redis did not take its launcher reference: %s", job_id, e)
    return job_id


def _checked_dataset(job_spec: JobSpec, layout: Layout, conn: redis.Redis) -> Path:
    try:
        dataset_dir = job_spec.dataset_dir(layout)
    except ValueError as e:
        raise ApiError(f"dataset: {e}") from None
    if not dataset_dir.is_dir() and dataset_dir.parent == layout.datasets:
        converting, _ = conversion_state(conn, dataset_dir.name)
        if converting == "converting":
            raise Conflict(f"dataset {dataset_dir.name!r} is still being converted; submit the job "
                           f"when GET /v1/datasets/{dataset_dir.name} says ready")
    if not dataset_dir.is_dir():
        raise ApiError(f"dataset {job_spec.dataset!r} is not a known dataset "
                       f"(no folder {dataset_dir.relative_to(layout.root)} in the data root)")
    return dataset_dir


# A client's retry with the same Idempotency-Key within this long gets the same job.
IDEMPOTENCY_TTL_S = 24 * 3600


def _claim_submission(conn: redis.Redis, key: str, job_id: str,
                      spec_json: dict) -> tuple[str, str | None]:
    """(Redis key of the claim, the job an earlier submission with ``key`` made or None)."""
    digest = hashlib.sha256(json.dumps(spec_json, sort_keys=True).encode()).hexdigest()
    claim = "incept:submission:" + hashlib.sha256(key.encode()).hexdigest()
    value = json.dumps({"job_id": job_id, "spec": digest})
    try:
        if conn.set(claim, value, nx=True, ex=IDEMPOTENCY_TTL_S):
            return claim, None
        earlier = json.loads(conn.get(claim) or value)
    except redis.RedisError:
        raise ApiError("Redis is unavailable; try again", status_code=503,
                       headers={"Retry-After": "5"}) from None
    if earlier["spec"] != digest:
        raise Conflict("this Idempotency-Key was used for a different job spec")
    return claim, earlier["job_id"]


def _forget_submission(conn: redis.Redis, state: JobState, run, claim: str | None) -> None:
    """Undo a failed submission, as far as each store answers."""
    shutil.rmtree(run.root, ignore_errors=True)
    with contextlib.suppress(redis.RedisError):
        state.delete(run.job_id)
        if claim is not None:
            conn.delete(claim)


def _resource_problems(job_spec: JobSpec, layout: Layout, dataset_dir: Path,
                       settings: Settings) -> list[str]:
    """What the spec asks beyond the data root or a trainer's memory (the
    trainer checks again against its own cgroup when it starts)."""
    problems = []
    if job_spec.checkpoint:
        try:
            layout.base_checkpoint(job_spec.checkpoint)
        except ValueError as e:
            problems.append(f"checkpoint: {e}")
    try:
        num_train = DatasetInfo.load(dataset_dir).count("train")
    except UserError:  # not converted (yet): the trainer says so
        num_train = 0
    memory = settings.trainer_memory_bytes or resource_limits().memory_bytes
    return problems + job_resource_problems(job_spec, num_train, memory)


def job_detail(layout: Layout, state: JobState, launcher: Launcher | None, job_id: str) -> dict:
    """The full job, with what the launcher (the cluster, or rq) says of it right now."""
    job = find_job(layout, state, job_id, full=True)
    launched: dict[str, Any] = job["launcher"] if isinstance(job.get("launcher"), dict) else {}
    if launcher is not None and job["state"] not in TERMINAL_STATES:
        try:
            launched = {**launched, **(launcher.status(job_id) or {})}
        except ApiError as e:
            launched = {**launched, "error": e.message}
    job["launcher"] = launched or None
    return job


def cancel_job(layout: Layout, state: JobState, launcher: Launcher, job_id: str) -> dict:
    """Ask the job to stop: ``cancelled`` if it never started, else ``cancelling``."""
    job = find_job(layout, state, job_id, full=False)
    if job["state"] in TERMINAL_STATES:
        raise Conflict(f"job {job_id} already {job['state']}")
    try:
        state.request_cancel(job_id)
        if launcher.cancel(job_id):
            state.set_state(job_id, "cancelled")  # it never started
        else:
            state.set_state(job_id, "cancelling")
    except redis.RedisError:
        raise ApiError("Redis is unavailable; try again", status_code=503,
                       headers={"Retry-After": "5"}) from None
    return find_job(layout, state, job_id, full=True)


# -- models -----------------------------------------------------------------------


async def list_models(layout: Layout, backend: PredictionBackend) -> list[dict]:
    """Every model on disk, its versions there and as the backend serves them."""
    out = []
    for name in layout.model_names():
        try:
            versions = [v.__dict__ for v in (await backend.model_status(name)).versions]
        except ApiError:  # not loaded there, or TF Serving down: still list what is on disk
            versions = []
        out.append({"name": name, "versions_on_disk": layout.model_versions(name),
                    "versions": versions, "backend": backend.name})
    return out
