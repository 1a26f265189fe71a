"""Request and response models of the HTTP API (the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from incept.settings import MAX_IMAGES_PER_REQUEST


class ErrorBody(BaseModel):
    detail: str
    problems: list[str] | None = None


class JobCreated(BaseModel):
    job_id: str
    url: str
    state: str


class Evaluation(BaseModel):
    step: int
    accuracy: float | None = None
    recall_at_5: float | None = None
    loss: float | None = None
    num_images: int | None = None
    ece: float | None = None
    blessed: bool | None = None
    exported_version: int | None = None
    evaluated_at: float | str | None = None


class Best(BaseModel):
    step: int
    accuracy: float | None = None


class JobSummary(BaseModel):
    job_id: str
    state: str
    dataset: str | None = None
    model_name: str | None = None
    created_at: float | None = None
    step: int | None = None
    max_steps: int | None = None
    best: Best | None = None


class JobDetail(JobSummary):
    spec: dict[str, Any] | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    images_per_sec: float | None = None
    eta_s: float | None = None
    path: str | None = Field(None, description="head_only (heads over cached backbone features) or full.")
    phase: str | None = Field(None, description="queued, features, training, evaluating or exported, "
                                                "when the trainer reports it.")
    features: dict[str, Any] | None = Field(None, description="The feature pass: done, total, images_per_sec, eta_s.")
    tensorboard_url: str | None = Field(None, description="This job in TensorBoard (INCEPT_TENSORBOARD_URL).")
    last_checkpoint_step: int | None = None
    latest_eval: dict[str, Any] | None = None
    evaluations: list[Evaluation] = Field(default_factory=list)
    best_eval: dict[str, Any] | None = Field(
        None, description="The best step's full evaluation (per-class metrics, confusion matrix).")
    exported_versions: list[int] = Field(default_factory=list)
    served_model: str | None = None
    error: str | None = None
    launcher: dict[str, Any] | None = None


class JobList(BaseModel):
    jobs: list[JobSummary]


class SkippedFile(BaseModel):
    file: str
    reason: str


class DatasetInfoOut(BaseModel):
    name: str
    state: str = Field(description="converting | ready | failed")
    class_names: list[str] | None = None
    num_classes: int | None = None
    counts: dict[str, Any] | None = None
    per_class: dict[str, dict[str, int]] | None = Field(None, description="split -> class -> images.")
    skipped: list[SkippedFile] | None = Field(None, description="Files the converter left out, and why.")
    converted: int | None = Field(None, description="Images re-encoded to 8-bit RGB and kept.")
    thumbnails: dict[str, list[str]] | None = Field(
        None, description="class -> thumbnail keys (GET /v1/datasets/{name}/thumbnails/{key}.jpg).")
    progress: dict[str, int] | None = Field(None, description="Images converted so far: done, total.")
    error: str | None = None


class DatasetList(BaseModel):
    datasets: list[DatasetInfoOut]


class DatasetAccepted(BaseModel):
    name: str
    state: str
    files: int
    url: str


class TopClass(BaseModel):
    label: str
    score: float


class ImagePrediction(BaseModel):
    top: list[TopClass]
    unknown: bool = Field(description="The model says the image is not one of its classes.")
    ood_score: float


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[ImagePrediction]


class B64Image(BaseModel):
    b64: str


class PredictRequest(BaseModel):
    """TF Serving's REST body: ``{"instances": [{"b64": "..."}]}``."""

    signature_name: str | None = None
    instances: list[B64Image | dict[str, B64Image]] = Field(min_length=1, max_length=MAX_IMAGES_PER_REQUEST)


class ModelVersion(BaseModel):
    version: int
    state: str
    error: str = ""


class ModelOut(BaseModel):
    name: str
    versions_on_disk: list[int]
    versions: list[ModelVersion]
    backend: str


class ModelList(BaseModel):
    models: list[ModelOut]


class Health(BaseModel):
    status: str
    version: str | None = Field(None, description="incept's version (on /healthz)")
    checks: dict[str, str] = Field(default_factory=dict)


# -- TF Serving's REST API (api_rest.md): documented shapes, for the OpenAPI schema --


class TFServingError(BaseModel):
    error: str


class TFServingStatus(BaseModel):
    error_code: str
    error_message: str


class TFServingVersionStatus(BaseModel):
    version: str = Field(description="int64 as a string (proto3's JSON mapping)")
    state: str = Field(description="START, LOADING, AVAILABLE, UNLOADING or END")
    status: TFServingStatus


class ModelStatusOut(BaseModel):
    """GetModelStatusResponse."""

    model_version_status: list[TFServingVersionStatus]


class TFServingModelSpec(BaseModel):
    name: str
    signature_name: str
    version: str


class TFServingMetadata(BaseModel):
    """GetModelMetadataResponse: ``metadata.signature_def`` is the SignatureDefMap."""

    model_spec: TFServingModelSpec
    metadata: dict[str, dict[str, Any]]


class TFServingPredictRequest(BaseModel):
    """Row (``instances``) or columnar (``inputs``) form, not both. The one input,
    ``images``, is DT_STRING: ``{"b64": "<base64 JPEG/PNG>"}`` per image."""

    signature_name: str | None = None
    instances: list[B64Image | dict[str, B64Image]] | None = Field(None, max_length=MAX_IMAGES_PER_REQUEST)
    inputs: (dict[str, list[B64Image]] | list[B64Image] | None) = Field(None, max_length=MAX_IMAGES_PER_REQUEST)


class TFServingPredictResponse(BaseModel):
    """``predictions`` for a row request (one object of every output per image),
    ``outputs`` for a columnar one (every output batched)."""

    predictions: list[dict[str, Any]] | None = None
    outputs: dict[str, Any] | None = None


# -- Open Inference Protocol (KServe v2) REST: documented shapes, for the OpenAPI schema --


class OipError(BaseModel):
    error: str


class OipServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OipTensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class OipModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[OipTensorMetadata]
    outputs: list[OipTensorMetadata]


class OipRepositoryModel(BaseModel):
    name: str
    version: str
    state: str


class OipInputTensor(BaseModel):
    name: str = Field(description='"images"')
    datatype: str = Field(description='"BYTES"')
    shape: list[int] = Field(description="[number of images]")
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data_size": N} when the images follow the JSON header')
    data: list[Any] | None = Field(None, description="each image in base64")


class OipRequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description='{"binary_data": true}')


class OipInferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[OipInputTensor]
    outputs: list[OipRequestedOutput] | None = None


class OipOutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class OipInferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[OipOutputTensor]


class OipReady(BaseModel):
    """The status is the answer (200 ready, 400 not); the body repeats it."""

    ready: bool


class OipLive(BaseModel):
    live: bool

class EvalImage(BaseModel):
    file: str
    thumbnail: str = Field(description="Key of its thumbnail: GET /v1/jobs/{job_id}/thumbnails/{key}.jpg")
    label: int
    predicted: int
    score: float = Field(description="The predicted class's probability.")
    loss: float | None = None
    ood_score: float | None = None


class EvalImages(BaseModel):
    job_id: str
    step: int
    matched: int = Field(description="Images matching the filter (before the limit).")
    images: list[EvalImage]


class RegistryVersion(BaseModel):
    version: int
    job_id: str | None = None
    step: int | None = None
    metrics: dict[str, Any] | None = None
    reason: str | None = Field(None, description="Why the evaluator exported it.")
    dataset: str | None = None
    net: str | None = None
    exported_at: float | None = None


class RegistryModel(BaseModel):
    name: str
    pinned: int | None = Field(None, description="The pinned version; null: the newest serves.")
    serving: int | None = Field(None, description="The version that should serve now.")
    available: list[int] = Field(default_factory=list, description="Versions the backend serves now.")
    backend: str
    versions: list[RegistryVersion]


class RegistryList(BaseModel):
    models: list[RegistryModel]
