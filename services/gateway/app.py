"""The FastAPI application: ``create_app(settings)`` wires the routes, the
launcher, the prediction backend, metrics and the error handlers."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.exceptions import HTTPException as StarletteHTTPException

from incept.errors import ApiError, UserError
from incept.jobstate import JobState
from incept.queues import connect, connect_async
from incept.serving.backend import PredictionBackend
from incept.settings import Settings
from incept.spec import SpecError
from services.gateway.deps import Authorized
from services.gateway.images import PixelBudget
from services.gateway.launchers.base import Launcher
from services.gateway.metrics import GatewayMetrics, PlatformCollector
from services.gateway.routes import (
    classify,
    datasets,
    evaluations,
    health,
    jobs,
    models,
    page,
    registry,
    schemas,
    v2,
)
from services.gateway.routes.page import STATIC_DIR
from services.gateway.slots import Slots
from services.gateway.uploads import clean_stale_uploads

log = logging.getLogger(__name__)


def make_backend(settings: Settings, metrics: GatewayMetrics) -> PredictionBackend:
    def count_error(kind: str) -> None:
        metrics.backend_errors.labels(backend=settings.predict_backend, kind=kind).inc()

    if settings.predict_backend == "grpc":
        from incept.serving.grpc import GrpcBackend

        return GrpcBackend(settings.tfserving_grpc, timeout_s=settings.backend_timeout_s,
                           on_error=count_error)
    if settings.predict_backend == "rest":
        from incept.serving.rest import RestBackend

        return RestBackend(settings.tfserving_rest, timeout_s=settings.backend_timeout_s,
                           on_error=count_error)
    from services.gateway.backends.inprocess import InProcessBackend

    return InProcessBackend(settings.layout, poll_s=settings.model_poll_s,
                            batch_max_size=settings.batch_max_size,
                            batch_max_delay_ms=settings.batch_max_delay_ms, metrics=metrics)


def make_launcher(settings: Settings, conn: redis.Redis) -> Launcher:
    if settings.launcher == "kubernetes":
        from services.gateway.launchers.kubernetes import KubernetesLauncher

        return KubernetesLauncher(settings.k8s_job_template, settings.k8s_namespace,
                                  image=settings.trainer_image, kubeconfig=settings.k8s_kubeconfig)
    from services.gateway.launchers.local import LocalLauncher

    return LocalLauncher(conn)


def speaks_protocol(path: str) -> bool:
    """Routes of a serving protocol (TF Serving's REST API under /v1/models/{name},
    the Open Inference Protocol under /v2), whose errors are ``{"error": ...}``."""
    return path.startswith("/v1/models/") or path == "/v2" or path.startswith("/v2/")


def _error(status: int, detail: str, problems: list[str] | None = None,
           headers: dict[str, str] | None = None, path: str = "") -> JSONResponse:
    if speaks_protocol(path):
        message = detail + (": " + "; ".join(problems) if problems else "")
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    body: dict[str, Any] = {"detail": detail}
    if problems:
        body["problems"] = problems
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(req: Request, e: ApiError):
        return _error(e.status_code, e.message, e.problems, e.headers, req.url.path)

    @app.exception_handler(SpecError)
    async def spec_error(req: Request, e: SpecError):
        return _error(422, "invalid job spec", e.problems, path=req.url.path)

    @app.exception_handler(UserError)
    async def user_error(req: Request, e: UserError):
        return _error(400, str(e), path=req.url.path)

    @app.exception_handler(RequestValidationError)
    async def validation_error(req: Request, e: RequestValidationError):
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            problems.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid request", problems[:50], path=req.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(req: Request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), headers=getattr(e, "headers", None),
                      path=req.url.path)

    @app.exception_handler(redis.RedisError)
    async def redis_error(req: Request, e: redis.RedisError):
        return _error(503, "Redis is unavailable; try again", headers={"Retry-After": "5"},
                      path=req.url.path)

    @app.exception_handler(Exception)
    async def unexpected(req: Request, e: Exception):
        # Logged here with its trace; the client only learns that it failed.
        log.exception("unexpected error on %s %s", req.method, req.url.path)
        return _error(500, "internal error (logged by the gateway)", path=req.url.path)


class BodyLimit:
    """Refuse a declared Content-Length above the limit before reading anything;
    routes that read bodies count the bytes they actually get as well."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            limit = (self.settings.max_upload_bytes
                     if scope["path"] == "/v1/datasets" else self.settings.max_body_bytes)
            for name, value in scope.get("headers", ()):
                if name == b"content-length":
                    try:
                        too_big = int(value) > limit
                    except ValueError:
                        too_big = False
                    if too_big:
                        response = _error(413, f"the request body is larger than {limit} bytes",
                                          path=scope["path"])
                        await response(scope, receive, send)
                        return
            received = 0
            rejected = False
            started = False

            async def guarded_send(message):
                nonlocal started
                if rejected:
                    return  # the 413 has been sent; whatever the app says is dropped
                started |= message["type"] == "http.response.start"
                await send(message)

            async def counting_receive():
                # A chunked body has no Content-Length: count what arrives, and past
                # the limit answer 413 here and tell the app the client went away.
                nonlocal received, rejected
                if rejected:
                    return {"type": "http.disconnect"}
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        if not started:
                            await _error(413, f"the request body is larger than {limit} bytes",
                                         path=scope["path"])(scope, receive, send)
                        rejected = True
                        return {"type": "http.disconnect"}
                return message

            await self.app(scope, counting_receive, guarded_send)
            return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, *, backend: PredictionBackend | None = None,
               launcher: Launcher | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = GatewayMetrics.create()
    docs: dict[str, Any] = ({} if settings.api_docs
                            else {"docs_url": None, "redoc_url": None, "openapi_url": None})
    app = FastAPI(
        title="incept gateway",
        version="1",
        description="Submit fine-tuning jobs, upload datasets, follow training, classify images.",
        lifespan=lifespan,
        **docs,
    )
    _attach_state(app, settings, metrics, backend, launcher)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, settings=settings)
    _add_routes(app)
    Instrumentator(registry=metrics.registry, excluded_handlers=["/metrics"]).instrument(app).expose(
        app, endpoint="/metrics", include_in_schema=False,
        dependencies=[] if settings.metrics_public else Authorized)
    return app


def _attach_state(app: FastAPI, settings: Settings, metrics: GatewayMetrics,
                  backend: PredictionBackend | None, launcher: Launcher | None) -> None:
    """What the routes reach through ``request.app.state`` (see deps)."""
    app.state.settings = settings
    app.state.layout = settings.layout
    app.state.metrics = metrics
    app.state.pixel_budget = PixelBudget(settings.max_inflight_pixels)
    app.state.upload_slots = Slots(settings.max_concurrent_uploads, "uploads")
    app.state.event_streams = Slots(settings.max_event_streams, "event streams", retry_after_s=5)
    app.state.redis = connect(settings.redis_url)
    app.state.async_redis = connect_async(settings.redis_url)
    app.state.backend = backend or make_backend(settings, metrics)
    metrics.registry.register(PlatformCollector(JobState(app.state.redis), settings.layout))
    app.state.launcher_error = None
    try:
        app.state.launcher = launcher or make_launcher(settings, app.state.redis)
    except Exception as e:  # the API still serves everything else; submit answers 503
        log.error("job launcher unavailable: %s", e)
        app.state.launcher = None
        app.state.launcher_error = str(e)


def _add_routes(app: FastAPI) -> None:
    # The prediction routes first: every request is matched against the routes in
    # order (by the router and again by the metrics middleware), and predictions
    # are the hot path.
    for router in (models.router, v2.router, classify.router, health.router, jobs.router,
                   evaluations.router, datasets.router, registry.router, schemas.router,
                   page.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


@asynccontextmanager
async def lifespan(app: FastAPI):
    await _prepare(app.state)
    oip_grpc = None
    settings = app.state.settings
    if settings.oip_grpc_port:
        from services.gateway import oip_grpc as grpc_service

        oip_grpc = await grpc_service.start(app.state, settings.host, settings.oip_grpc_port)
    try:
        yield
    finally:
        if oip_grpc is not None:
            await oip_grpc.stop(grace=1)
        await app.state.backend.close()
        app.state.redis.close()
        await app.state.async_redis.aclose()


async def _prepare(state: State) -> None:
    """Before the first request: the data root's folders, TensorFlow imported,
    stale uploads removed, the prediction backend started."""
    state.layout.ensure()
    # Keras and TensorFlow are imported here, once, before any request: the
    # first submissions validate specs in several threads at once, and
    # TensorFlow's import is not safe to run concurrently.
    from incept.nets import net_names

    await run_in_threadpool(net_names)
    try:  # what a crashed gateway or worker left behind; never a reason not to start
        await run_in_threadpool(clean_stale_uploads, state.layout, state.redis)
    except Exception as e:
        log.warning("uploads/ not cleaned: %s", e)
    await state.backend.start()
