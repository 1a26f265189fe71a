"""TF Serving over REST (``/v1/models/{name}[/versions/{v}]:predict``) through
one pooled ``httpx.AsyncClient``."""

from __future__ import annotations

import base64

import httpx

from services.gateway.backends.base import (
    ModelStatus,
    PredictionBackend,
    PredictResult,
    VersionStatus,
    predictions_from_outputs,
)
from services.gateway.errors import BackendUnavailable, BadImage, ModelNotFound
from services.gateway.metrics import GatewayMetrics


class RestBackend(PredictionBackend):
    name = "rest"

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, metrics: GatewayMetrics | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self.client = httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            transport=httpx.AsyncHTTPTransport(retries=2))  # retries failed connects only

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def _failed(self, kind: str) -> None:
        if self.metrics:
            self.metrics.backend_errors.labels(backend=self.name, kind=kind).inc()

    async def _call(self, method: str, path: str, model: str, **kw) -> dict:
        try:
            response = await self.client.request(method, path, **kw)
        except httpx.HTTPError as e:
            self._failed(type(e).__name__)
            raise BackendUnavailable(f"TF Serving at {self.base_url} did not answer "
                                     f"({type(e).__name__})") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = str(body.get("error", ""))[:200] if isinstance(body, dict) else ""
        if response.status_code == 404:
            self._failed("NOT_FOUND")
            raise ModelNotFound(f"unknown model {model!r}: {error}")
        if response.status_code == 400:
            self._failed("INVALID_ARGUMENT")
            raise BadImage(f"an image cannot be decoded by the model: {error}")
        if response.status_code != 200 or not isinstance(body, dict):
            self._failed(f"HTTP_{response.status_code}")
            raise BackendUnavailable(f"TF Serving answered {response.status_code}: {error}")
        return body

    async def predict(self, model: str, images: list[bytes],
                      version: int | None = None) -> PredictResult:
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
        body = await self._call("POST", f"{path}:predict", model, json={
            "signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(img).decode("ascii")} for img in images],
        })
        rows = body.get("predictions", [])
        outputs = {key: [row[key] for row in rows]
                   for key in ("labels", "scores", "ood_score", "is_unknown")}
        # TF Serving's REST predict does not say which version answered: ask.
        served = version if version is not None else await self._available_version(model)
        return PredictResult(model=model, version=served,
                             predictions=predictions_from_outputs(outputs, len(images)))

    async def _available_version(self, model: str) -> int:
        status = await self.model_status(model)
        available = [v.version for v in status.versions if v.state == "AVAILABLE"]
        return max(available) if available else -1

    async def model_status(self, model: str) -> ModelStatus:
        body = await self._call("GET", f"/v1/models/{model}", model)
        return ModelStatus(model, [
            VersionStatus(int(v["version"]), v.get("state", "UNKNOWN"),
                          v.get("status", {}).get("error_message", ""))
            for v in body.get("model_version_status", [])])
