"""Dependencies injected into the routes: settings, Redis, job state, the
launcher, the prediction backend, and bearer-token auth."""

from __future__ import annotations

import hmac
from typing import Annotated

import redis
from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from incept.jobstate import JobState
from incept.layout import Layout, check_name
from incept.serving.backend import PredictionBackend
from incept.settings import Settings
from services.gateway.errors import ApiError, ModelNotFound, NotFound
from services.gateway.launchers.base import Launcher
from services.gateway.metrics import GatewayMetrics

_bearer = HTTPBearer(auto_error=False, description="A token from INCEPT_API_TOKENS")

# Every dependency is ``async def``: they never block, and FastAPI would run a
# plain ``def`` one in the thread pool (a thread hop per dependency per request).


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_layout(request: Request) -> Layout:
    return request.app.state.layout


async def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


async def get_jobstate(request: Request) -> JobState:
    return JobState(request.app.state.redis)


async def get_launcher(request: Request) -> Launcher:
    launcher = request.app.state.launcher
    if launcher is None:
        raise ApiError(f"the job launcher is not available: {request.app.state.launcher_error}",
                       status_code=503, headers={"Retry-After": "30"})
    return launcher


async def get_backend(request: Request) -> PredictionBackend:
    return request.app.state.backend


async def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


def _check_token(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError("this route needs 'Authorization: Bearer <token>'", status_code=401,
                       headers=challenge)
    tokens = settings.tokens()
    if not tokens:
        raise ApiError("the gateway has no API tokens configured (INCEPT_API_TOKENS)",
                       status_code=401, headers=challenge)
    given = credentials.credentials.encode()
    # Compare against every token (no early exit), each in constant time.
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given, token.encode())
    if not matched:
        raise ApiError("invalid token", status_code=401, headers=challenge)


def token_is_valid(request: Request, settings: Settings) -> bool:
    """Whether the request carries a valid bearer token (for routes that answer
    everyone, but say more to token holders)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        _check_token(settings, HTTPAuthorizationCredentials(scheme="Bearer", credentials=token))
    except ApiError:
        return False
    return True


async def require_token(settings: Annotated[Settings, Depends(get_settings)],
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    _check_token(settings, credentials)


async def require_predict_token(settings: Annotated[Settings, Depends(get_settings)],
                          credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                 Depends(_bearer)]) -> None:
    if settings.protect_predict:
        _check_token(settings, credentials)


def _known_name(value: str, what: str, not_found: type[NotFound] = NotFound) -> str:
    """A name in a URL path: one that could not be a folder name names nothing (404)."""
    try:
        return check_name(value, f"{what} name")
    except ValueError:
        raise not_found(f"unknown {what} {value[:80]!r}") from None


async def job_id_path(job_id: Annotated[str, Path(description="A job id.")]) -> str:
    return _known_name(job_id, "job")


async def dataset_name_path(name: Annotated[str, Path(description="A dataset's name.")]) -> str:
    return _known_name(name, "dataset")


async def model_name_path(name: Annotated[str, Path(description="A served model's name.")]) -> str:
    return _known_name(name, "model", ModelNotFound)


async def new_dataset_name(name: Annotated[str, Query(
        description="The dataset's name (letters, digits, '_', '-', '.').", max_length=64)]) -> str:
    try:
        return check_name(name, "dataset name")
    except ValueError as e:
        raise ApiError(str(e)) from None


SettingsDep = Annotated[Settings, Depends(get_settings)]
LayoutDep = Annotated[Layout, Depends(get_layout)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
JobStateDep = Annotated[JobState, Depends(get_jobstate)]
LauncherDep = Annotated[Launcher, Depends(get_launcher)]
BackendDep = Annotated[PredictionBackend, Depends(get_backend)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
JobId = Annotated[str, Depends(job_id_path)]
DatasetName = Annotated[str, Depends(dataset_name_path)]
ModelName = Annotated[str, Depends(model_name_path)]
NewDatasetName = Annotated[str, Depends(new_dataset_name)]
Authorized = [Depends(require_token)]
PredictAuthorized = [Depends(require_predict_token)]
