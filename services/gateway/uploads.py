"""Dataset uploads on the volume: one claim per name (the first upload wins,
the others get 409), the free space the volume keeps, the body written to disk
off the event loop and unpacked beside it, and ``uploads/`` cleaned of what a
crashed gateway or worker left behind."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import redis
from starlette.concurrency import run_in_threadpool

from incept.layout import Layout
from incept.queues import DATASETS_QUEUE, SERIALIZER, rq_queue
from incept.settings import Settings
from services.gateway.archives import ExtractReport, Limits, extract_archive
from services.gateway.errors import ApiError, Conflict, TooLarge

log = logging.getLogger(__name__)

# A claim outlives any upload (2 GB at a slow 1 MB/s is ~35 minutes) and the
# extraction after it; a crashed gateway's claim expires on its own.
CLAIM_TTL_S = 3 * 3600
# Left in uploads/ and untouched this long, and no pending conversion's
# source: an upload a crashed gateway or worker abandoned.
STALE_UPLOAD_S = 3600
_WRITE_CHUNK = 1 << 20
# Delete the claim only if it is still ours (it may have expired and been taken).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _claim_key(name: str) -> str:
    return f"incept:dataset-upload:{name}"


def claim_name(conn: redis.Redis, name: str) -> str:
    """Atomically claim ``name`` for one upload; Conflict if another holds it."""
    token = secrets.token_hex(8)
    if not conn.set(_claim_key(name), token, nx=True, ex=CLAIM_TTL_S):
        raise Conflict(f"dataset {name!r} is already being uploaded")
    return token


def release_name(conn: redis.Redis, name: str, token: str) -> None:
    with contextlib.suppress(redis.RedisError):  # it expires anyway
        conn.eval(_RELEASE, 1, _claim_key(name), token)


def free_bytes(layout: Layout) -> int:
    return shutil.disk_usage(layout.root).free


def check_free_space(layout: Layout, settings: Settings) -> None:
    free = free_bytes(layout)
    if free < settings.min_free_bytes:
        raise ApiError(f"the data volume has {free} bytes free; uploads need at least "
                       f"{settings.min_free_bytes} (min_free_bytes)", status_code=507)


async def receive(chunks: AsyncIterator[bytes], archive: Path, limit: int) -> int:
    """Write the request body to ``archive`` (a new file) in 1 MB writes in a
    thread: a disk that stalls must not stall every other request."""
    size = 0
    pending = bytearray()
    out = await run_in_threadpool(open, archive, "xb")
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the upload is larger than {limit} bytes")
            pending += chunk
            if len(pending) >= _WRITE_CHUNK:
                await run_in_threadpool(out.write, bytes(pending))
                pending.clear()
        if pending:
            await run_in_threadpool(out.write, bytes(pending))
    finally:
        await run_in_threadpool(out.close)
    return size


async def receive_and_extract(body: AsyncIterator[bytes], layout: Layout,
                              settings: Settings) -> ExtractReport:
    """The body into uploads/<random>.archive (never a client-chosen name), then
    unpacked next to it; the archive is always removed, the folder on failure."""
    layout.uploads.mkdir(parents=True, exist_ok=True)
    upload_id = uuid.uuid4().hex
    archive = layout.uploads / f"{upload_id}.archive"
    extracted = layout.uploads / upload_id
    try:
        size = await receive(body, archive, settings.max_upload_bytes)
        if size == 0:
            raise ApiError("the request body is empty: send a zip or tar archive")
        limits = Limits(settings.max_archive_files, settings.max_unpacked_bytes,
                        settings.max_compression_ratio)
        report = await run_in_threadpool(extract_archive, archive, extracted, limits)
    except BaseException:
        shutil.rmtree(extracted, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(archive)
    return report


def _pending_sources(conn: redis.Redis, uploads: Path) -> set[str]:
    """The uploads/ entries that queued or running conversions read from."""
    from rq.job import Job
    from rq.registry import StartedJobRegistry

    queue = rq_queue(conn, DATASETS_QUEUE)
    ids = list(queue.job_ids) + StartedJobRegistry(queue=queue).get_job_ids()
    names = set()
    # A job whose arguments cannot be read raises: then nothing is cleaned.
    for job in Job.fetch_many(ids, connection=conn, serializer=SERIALIZER):
        if job is not None:
            source = Path(job.args[1]).resolve()
            if uploads.resolve() in source.parents:
                names.add(source.relative_to(uploads.resolve()).parts[0])
    return names


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for entry in (*dirs, *files):
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(folder, entry)).st_mtime)
    return newest


def clean_stale_uploads(layout: Layout, conn: redis.Redis) -> list[str]:
    """Remove what crashed uploads and conversions left in uploads/: entries no
    pending conversion reads and nothing has touched for STALE_UPLOAD_S (another
    gateway replica may be receiving one right now)."""
    uploads = layout.uploads
    if not uploads.is_dir():
        return []
    try:
        keep = _pending_sources(conn, uploads)
    except Exception as e:  # Redis down, a payload it cannot read: better keep everything
        log.warning("uploads/ not cleaned: cannot list pending conversions (%s)", e)
        return []
    removed = []
    for entry in uploads.iterdir():
        if entry.name in keep or time.time() - _newest_mtime(entry) < STALE_UPLOAD_S:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    if removed:
        log.info("removed %d abandoned uploads from %s", len(removed), uploads)
    return removed
