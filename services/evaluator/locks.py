"""Redis locks that live only as long as their holder: a short TTL renewed by
a background thread, so a worker killed with SIGKILL frees its lock within
``Settings.eval_lock_ttl_s`` and the work can be redone."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import redis
from redis.exceptions import LockError, RedisError

log = logging.getLogger(__name__)



def lock_ttl_s() -> float:
    from incept.settings import get_settings

    return get_settings().eval_lock_ttl_s


def eval_lock_name(job_id: str, step: int) -> str:
    return f"incept:lock:eval:{job_id}:{int(step)}"


def job_lock_name(job_id: str) -> str:
    """Serialises bless decisions of one job (best-so-far is read, then written)."""
    return f"incept:lock:bless:{job_id}"


def model_lock_name(model_name: str) -> str:
    """Serialises exports into one served model across jobs (each compares with
    the version being served, then exports the next)."""
    return f"incept:lock:bless-model:{model_name}"


def is_locked(conn: redis.Redis, name: str) -> bool:
    return bool(conn.exists(name))


@contextlib.contextmanager
def held_lock(conn: redis.Redis, name: str, *, blocking: bool = True,
              wait_s: float | None = None, ttl_s: float | None = None) -> Iterator[bool]:
    """Yield True while holding ``name`` (False if not acquired without blocking)."""
    ttl_s = ttl_s or lock_ttl_s()
    lock = conn.lock(name, timeout=ttl_s, thread_local=False)
    if not lock.acquire(blocking=blocking, blocking_timeout=wait_s):
        yield False
        return
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                lock.reacquire()
            except (LockError, RedisError) as e:
                log.warning("could not renew lock %s: %s", name, e)

    renewer = threading.Thread(target=renew, name=f"renew {name}", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(LockError, RedisError):
            lock.release()
