"""Liveness and readiness. Both answer without a token (probes); the reasons
behind a check (Redis's and the backend's error text, free bytes) only go to
token holders, or to everyone with ``readyz_details_public``."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from incept import __version__
from services.gateway.deps import BackendDep, LayoutDep, RedisDep, SettingsDep, token_is_valid
from services.gateway.schemas import Health
from services.gateway.uploads import free_bytes

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz():
    # On the event loop: liveness must not queue behind a busy thread pool.
    return {"status": "ok", "version": __version__}


async def _checks(conn, backend, layout, settings) -> tuple[bool, dict[str, str], dict[str, str]]:
    """(ready, public word per check, the detail behind each word)."""
    words, details = {}, {}
    try:
        await run_in_threadpool(conn.ping)
        words["redis"] = details["redis"] = "ok"
    except redis.RedisError as e:
        words["redis"], details["redis"] = "unreachable", f"unreachable: {type(e).__name__}: {e}"
    try:
        ready, why = await backend.ready(layout.model_names())
    except Exception as e:  # readiness must answer, whatever the backend does
        ready, why = False, f"{type(e).__name__}: {e}"
    words["backend"], details["backend"] = ("ok" if ready else "not ready"), why
    # Reported, not a reason to take predictions offline: only uploads need room.
    free = await run_in_threadpool(free_bytes, layout)
    words["volume"] = "ok" if free >= settings.min_free_bytes else "low on space"
    details["volume"] = f"{free} bytes free (uploads need {settings.min_free_bytes})"
    return words["redis"] == "ok" and ready, words, details


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request, conn: RedisDep, backend: BackendDep, layout: LayoutDep,
                 settings: SettingsDep):
    ok, words, details = await _checks(conn, backend, layout, settings)
    shown = details if settings.readyz_details_public or token_is_valid(request, settings) else words
    body = {"status": "ready" if ok else "not ready", "checks": shown}
    return body if ok else JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
