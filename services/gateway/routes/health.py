"""Liveness and readiness."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from incept import __version__
from services.gateway.deps import BackendDep, LayoutDep, RedisDep
from services.gateway.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz():
    return {"status": "ok", "version": __version__}


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(conn: RedisDep, backend: BackendDep, layout: LayoutDep):
    checks = {}
    ok = True
    try:
        await run_in_threadpool(conn.ping)
        checks["redis"] = "ok"
    except redis.RedisError as e:
        ok = False
        checks["redis"] = f"unreachable: {type(e).__name__}"
    try:
        ready, why = await backend.ready(layout.model_names())
    except Exception as e:  # readiness must answer, whatever the backend does
        ready, why = False, f"{type(e).__name__}: {e}"
    checks["backend"] = why
    ok &= ready
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    return body if ok else JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
