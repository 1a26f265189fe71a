"""TF Serving over gRPC: tensorflow-serving-api's PredictionService and
ModelService on one shared channel. Every call has a deadline; UNAVAILABLE is
retried by gRPC itself (a retry policy in the channel's service config)."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
from grpc import aio

from incept.serving.backend import ModelMetadata, ModelStatus, PredictionBackend, VersionStatus
from incept.serving.errors import BackendUnavailable, BadImage, ModelNotFound
from incept.serving.outputs import PredictResult

_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "tensorflow.serving.PredictionService"},
                 {"service": "tensorflow.serving.ModelService"}],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.1s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})

_STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING",
                50: "END"}


class GrpcBackend(PredictionBackend):
    name = "grpc"

    def __init__(self, target: str, *, timeout_s: float = 10.0, on_error: Callable[[str], None] | None = None):
        self.target = target
        self.timeout_s = timeout_s
        self.on_error = on_error  # called with the kind of each failed call (metrics)
        self.channel: aio.Channel | None = None

    async def start(self) -> None:
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.channel = aio.insecure_channel(self.target, options=[
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            # Reconnect soon after TF Serving restarts (gRPC's default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    def _error(self, e: aio.AioRpcError, model: str) -> Exception:
        code = e.code()
        if self.on_error:
            self.on_error(code.name)
        if code == grpc.StatusCode.NOT_FOUND:
            return ModelNotFound(f"unknown model {model!r}: {e.details()}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return BadImage(f"an image cannot be decoded by the model: {(e.details() or '')[:200]}")
        return BackendUnavailable(f"TF Serving at {self.target} did not answer ({code.name})")

    async def predict(self, model: str, images: list[bytes],
                      version: int | None = None) -> PredictResult:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = "serving_default"
        if version is not None:
            request.model_spec.version.value = version
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
        try:
            response = await self.predictions.Predict(request, timeout=self.timeout_s)
        except aio.AioRpcError as e:
            raise self._error(e, model) from None
        outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        return PredictResult(model=model, version=int(response.model_spec.version.value),
                             outputs=outputs)

    async def metadata(self, model: str, version: int | None = None) -> ModelMetadata:
        from tensorflow_serving.apis import get_model_metadata_pb2

        from incept.serving.tfserving_json import signature_map_json

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        try:
            response = await self.predictions.GetModelMetadata(request, timeout=self.timeout_s)
        except aio.AioRpcError as e:
            raise self._error(e, model) from None
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        return ModelMetadata(model, int(response.model_spec.version.value),
                             signature_map_json(sig_map.signature_def))

    async def model_status(self, model: str) -> ModelStatus:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        try:
            response = await self.models.GetModelStatus(request, timeout=self.timeout_s)
        except aio.AioRpcError as e:
            raise self._error(e, model) from None
        return ModelStatus(model, [
            VersionStatus(int(v.version), _STATE_NAMES.get(v.state, str(v.state)),
                          v.status.error_message)
            for v in response.model_version_status])
