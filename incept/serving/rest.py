"""TF Serving over REST (``/v1/models/{name}[/versions/{v}]:predict``) through
one pooled ``httpx.AsyncClient``."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from incept.serving.backend import ModelMetadata, ModelStatus, PredictionBackend, VersionStatus
from incept.serving.errors import BackendUnavailable, BadImage, ModelNotFound
from incept.serving.outputs import PredictResult
from incept.serving.tfserving_json import output_types, outputs_from_json, predict_request


class RestBackend(PredictionBackend):
    name = "rest"

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, on_error: Callable[[str], None] | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.on_error = on_error  # called with the kind of each failed call (metrics)
        self.client: httpx.AsyncClient | None = None
        self._types: dict[tuple[str, int], dict] = {}  # (model, version) -> output types

    async def start(self) -> None:
        self.client = httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            transport=httpx.AsyncHTTPTransport(retries=2))  # retries failed connects only

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def _failed(self, kind: str) -> None:
        if self.on_error:
            self.on_error(kind)

    async def _call(self, method: str, path: str, model: str, **kw) -> dict:
        if self.client is None:
            raise BackendUnavailable("the TF Serving REST client was not started")
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
        # The columnar form: TF Serving answers with each output batched.
        body = await self._call("POST", f"{_path(model, version)}:predict", model,
                                json=predict_request(images))
        # TF Serving's REST predict does not say which version answered: ask.
        served = version if version is not None else await self._available_version(model)
        try:
            outputs = outputs_from_json(body, await self._output_types(model, served))
        except ValueError as e:
            self._failed("BAD_ANSWER")
            raise BackendUnavailable(f"TF Serving answered without outputs: {e}") from None
        return PredictResult(model=model, version=served, outputs=outputs)

    async def _output_types(self, model: str, version: int) -> dict:
        """The signature's output types, read once per served version."""
        if (model, version) not in self._types:
            meta = await self.metadata(model, version if version >= 0 else None)
            self._types[(model, version)] = output_types(meta.signature_def)
        return self._types[(model, version)]

    async def metadata(self, model: str, version: int | None = None) -> ModelMetadata:
        body = await self._call("GET", f"{_path(model, version)}/metadata", model)
        try:
            return ModelMetadata(model, int(body["model_spec"]["version"]),
                                 body["metadata"]["signature_def"])
        except (KeyError, TypeError, ValueError):
            self._failed("BAD_ANSWER")
            raise BackendUnavailable("TF Serving's metadata answer has no signature_def") from None

    async def _available_version(self, model: str) -> int:
        status = await self.model_status(model)
        available = [v.version for v in status.versions if v.state == "AVAILABLE"]
        return max(available) if available else -1

    async def model_status(self, model: str) -> ModelStatus:
        body = await self._call("GET", _path(model, None), model)
        return ModelStatus(model, [
            VersionStatus(int(v["version"]), v.get("state", "UNKNOWN"),
                          v.get("status", {}).get("error_message", ""))
            for v in body.get("model_version_status", [])])


def _path(model: str, version: int | None) -> str:
    return f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
