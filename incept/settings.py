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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INCEPT_", env_file=".env", extra="ignore")

    # Shared volume and Redis
    data_root: Path = Field(Path("var"), description="Root of the shared volume.")
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Gateway
    host: str = "127.0.0.1"
    port: int = 8000
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer tokens for job, dataset and cancel routes (comma-separated).",
    )
    api_tokens_file: Path | None = Field(
        None, description="A mounted secret with one token per line, added to api_tokens."
    )
    protect_predict: bool = False
    predict_backend: Literal["inprocess", "grpc", "rest"] = "inprocess"
    tfserving_grpc: str = "127.0.0.1:8500"
    tfserving_rest: str = "http://127.0.0.1:8501"
    backend_timeout_s: float = 10.0
    model_poll_s: float = 2.0
    batch_max_size: int = 32
    batch_max_delay_ms: float = 2.0
    top_k: int = 5
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_images_per_request: int = 32
    max_upload_bytes: int = 2 * 1024**3
    max_archive_files: int = 100_000
    max_unpacked_bytes: int = 8 * 1024**3
    max_compression_ratio: float = 200.0

    # CLI client (incept submit/status/watch/predict); default: the local stack's state file.
    gateway_url: str | None = Field(None, description="Gateway the CLI client talks to.")
    api_token: str | None = Field(None, description="Bearer token the CLI client sends.")

    # Launchers
    launcher: Literal["local", "kubernetes"] = "local"
    k8s_namespace: str = "incept"
    k8s_job_template: Path = Path("k8s/base/trainer/job-template.yaml")
    k8s_kubeconfig: Path | None = Field(
        None, description="A kubeconfig for the Kubernetes launcher (default: in-cluster, else ~/.kube/config).")
    trainer_image: str = "incept-trainer:0.1.0"
    # Multi-node training from a Kubernetes Indexed Job (incept.training.distribute
    # builds TF_CONFIG from these and JOB_COMPLETION_INDEX).
    worker_hosts: str = Field("", description="Comma-separated host names of the Indexed Job's workers.")
    worker_port: int = Field(12345, description="Port the multi-node workers talk on.")

    # Evaluator
    reconcile_interval_s: float = 30.0
    keep_versions: int = 5
    eval_lock_ttl_s: float = Field(
        15.0, gt=0, description="A killed evaluator's per-checkpoint lock expires after this long.")

    @field_validator("api_tokens", mode="before")
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
        return Layout(self.data_root)


@lru_cache
def get_settings() -> Settings:
    return Settings()
