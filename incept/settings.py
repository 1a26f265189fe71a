"""All configuration in one pydantic-settings class, read from ``INCEPT_*``
environment variables (and an optional ``.env``). Every service takes what it
needs from here; the README lists every field."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from incept.layout import Layout

# The prediction schema's hard ceiling on instances (max_images_per_request is at most this).
MAX_IMAGES_PER_REQUEST = 256


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INCEPT_", env_file=".env", extra="ignore")

    # Shared volume and Redis
    data_root: Path = Field(Path("var"), description="Root of the shared volume (datasets, runs, models, cache).")
    checkpoint_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders outside the data root that a spec's base checkpoint may come from (comma-separated).")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the queues and live job state.")

    # Gateway
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8000, description="Port the gateway listens on.")
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer tokens for job, dataset and cancel routes (comma-separated).",
    )
    api_tokens_file: Path | None = Field(
        None, description="A mounted secret with one token per line, added to api_tokens."
    )
    protect_predict: bool = Field(False, description="Require a bearer token for prediction too.")
    predict_backend: Literal["inprocess", "grpc", "rest"] = Field(
        "inprocess", description="Where predictions run: in the gateway, or TF Serving over gRPC or REST.")
    tfserving_grpc: str = Field("127.0.0.1:8500", description="TF Serving's gRPC address (backend grpc).")
    oip_grpc_port: int = Field(0, ge=0, le=65535, description=(
        "Port of the Open Inference Protocol's gRPC service (inference.GRPCInferenceService); 0: off."))
    tfserving_rest: str = Field("http://127.0.0.1:8501", description="TF Serving's REST URL (backend rest).")
    backend_timeout_s: float = Field(10.0, description="Deadline of one call to the prediction backend.")
    model_poll_s: float = Field(1.0, description="How often the in-process backend looks for new versions (as TF Serving, every second by default).")
    batch_max_size: int = Field(32, description="In-process micro-batching: most images per model call.")
    batch_max_delay_ms: float = Field(2.0, description="In-process micro-batching: longest wait to fill a batch.")
    max_body_bytes: int = Field(20 * 1024 * 1024, description="Largest prediction request body (413 above).")
    max_image_bytes: int = Field(10 * 1024 * 1024, description="Largest single image (413 above).")
    max_image_pixels: int = Field(40_000_000, description="Largest image in pixels (decompression bombs).")
    max_images_per_request: int = Field(32, ge=1, le=MAX_IMAGES_PER_REQUEST,
                                        description="Most images in one prediction request (413 above).")
    max_request_pixels: int = Field(
        50_000_000, ge=1, description="Pixels the images of one prediction request decode to, summed from "
        "their headers before any decode (413 above).")
    max_inflight_pixels: int = Field(
        100_000_000, ge=1, description="Pixels being decoded at once by all prediction requests of a gateway; "
        "a request waits for room up to backend_timeout_s, then 503.")
    max_upload_bytes: int = Field(2 * 1024**3, description="Largest dataset archive upload.")
    max_archive_files: int = Field(100_000, description="Most entries (files and folders) in a dataset archive.")
    max_unpacked_bytes: int = Field(8 * 1024**3, description="Largest unpacked size of a dataset archive.")
    max_compression_ratio: float = Field(200.0, description="Highest unpacked/packed ratio of an archive (zip bombs).")
    max_event_streams: int = Field(200, ge=1, description="Live job event streams one gateway holds open (429 beyond).")
    event_stream_max_s: float = Field(
        3600.0, gt=0, description="Longest a job event stream stays open; the client reconnects with Last-Event-ID.")
    max_concurrent_uploads: int = Field(2, ge=1, description="Dataset uploads one gateway receives at once (429 beyond).")
    min_free_bytes: int = Field(
        1024**3, ge=0, description="Free space the data volume keeps: uploads are refused (507) below it; /readyz reports it.")
    metrics_public: bool = Field(
        True, description="Serve /metrics without a token (Prometheus scrapers); false: only with a bearer token.")
    api_docs: bool = Field(True, description="Serve /docs, /redoc and /openapi.json (false: 404).")
    readyz_details_public: bool = Field(
        False, description="/readyz shows the reasons behind its checks (error text, free bytes) without a token.")
    tensorboard_url: str | None = Field(
        None, description="TensorBoard as users reach it (e.g. http://127.0.0.1:6006); the page links each job there.")

    # CLI client (incept submit/status/watch/predict); default: the local stack's state file.
    gateway_url: str | None = Field(None, description="Gateway the CLI client talks to.")
    api_token: str | None = Field(None, description="Bearer token the CLI client sends.")

    # Launchers
    launcher: Literal["local", "kubernetes"] = Field(
        "local", description="How the gateway starts training: the rq queue 'train', or a Kubernetes Job.")
    k8s_namespace: str = Field("incept", description="Namespace of the trainer Jobs.")
    k8s_job_template: Path = Field(Path("k8s/base/trainer/job-template.yaml"),
                                   description="The batch/v1 Job template the Kubernetes launcher fills in.")
    k8s_kubeconfig: Path | None = Field(
        None, description="A kubeconfig for the Kubernetes launcher (default: in-cluster, else ~/.kube/config).")
    trainer_memory_bytes: int | None = Field(
        None, gt=0, description="Memory of one trainer, for the gateway's job checks (default: the gateway's own cgroup limit).")
    trainer_image: str = Field("incept-trainer:0.1.0", description="Image of the trainer Jobs.")
    # Multi-node training from a Kubernetes Indexed Job (incept.training.distribute
    # builds TF_CONFIG from these and JOB_COMPLETION_INDEX).
    worker_hosts: str = Field("", description="Comma-separated host names of the Indexed Job's workers.")
    worker_port: int = Field(12345, description="Port the multi-node workers talk on.")

    # Evaluator
    reconcile_interval_s: float = Field(
        30.0, description="How often the evaluator rescans runs/ for checkpoints with no result.")
    keep_versions: int = Field(5, description="Exported versions kept per served model.")
    eval_lock_ttl_s: float = Field(
        15.0, gt=0, description="A killed evaluator's per-checkpoint lock expires after this long.")

    @field_validator("api_tokens", "checkpoint_roots", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    def tokens(self) -> list[str]:
        tokens = list(self.api_tokens)
        if self.api_tokens_file and self.api_tokens_file.exists():
            tokens += [t.strip() for t in self.api_tokens_file.read_text().splitlines() if t.strip()]
        return tokens

    @property
    def layout(self) -> Layout:
        return Layout(self.data_root, tuple(self.checkpoint_roots))


@lru_cache
def get_settings() -> Settings:
    return Settings()
