"""One interface for every prediction backend: TF Serving over gRPC or REST
(``incept.serving.grpc``/``.rest``), or the gateway's in-process SavedModel.
Each returns the serving signature's batched outputs (``incept.serving.outputs``)
and its metadata; the gateway's routes turn them into TF Serving's JSON or the
gateway's own shape."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from incept.errors import ApiError
from incept.serving.outputs import PredictResult


@dataclass
class ModelMetadata:
    model: str
    version: int
    signature_def: dict  # the SignatureDefMap in TF Serving's JSON form


@dataclass
class VersionStatus:
    version: int
    state: str  # TF Serving's names: START, LOADING, AVAILABLE, UNLOADING, END
    error: str = ""


@dataclass
class ModelStatus:
    name: str
    versions: list[VersionStatus] = field(default_factory=list)


class PredictionBackend(ABC):
    name: str = "base"

    async def start(self) -> None:
        """Open connections, start background tasks."""
        return None

    async def close(self) -> None:
        """Release connections and tasks."""
        return None

    @abstractmethod
    async def predict(self, model: str, images: list[bytes],
                      version: int | None = None) -> PredictResult:
        """Classify encoded images; raises ModelNotFound, BackendUnavailable, BadImage."""

    @abstractmethod
    async def model_status(self, model: str) -> ModelStatus:
        """Versions of a model and their states; raises ModelNotFound."""

    @abstractmethod
    async def metadata(self, model: str, version: int | None = None) -> ModelMetadata:
        """The served version's signatures; raises ModelNotFound, BackendUnavailable."""

    async def ready(self, models: list[str]) -> tuple[bool, str]:
        """Whether the backend answers and serves at least one of ``models`` (serving
        what it can: one broken model does not take the others offline), and what
        it serves and cannot serve."""
        if not models:
            return False, "no model exported yet"
        served, problems = [], []
        for model in models:
            try:
                status = await self.model_status(model)
            except ApiError as e:
                problems.append(f"{model}: {e.message}")
                continue
            if any(v.state == "AVAILABLE" for v in status.versions):
                served.append(model)
            else:
                problems.append(f"{model}: no AVAILABLE version")
        if not served:
            return False, "; ".join(problems)
        why = f"{self.name} backend serves {', '.join(map(repr, served))}"
        return True, why + (f"; not served: {'; '.join(problems)}" if problems else "")
