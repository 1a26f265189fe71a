"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) on
its own port, in the gateway's event loop and in front of the same backend. The
stubs are the ones tritonclient ships, generated from the protocol's .proto
(Triton's superset of KServe's ``grpc_predict_v2.proto``; the methods served
here are KServe's plus RepositoryIndex). Same limits and token as ``:predict``."""

from __future__ import annotations

import hmac
import logging

import grpc
import numpy as np
from grpc import aio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from incept.serving import oip
from services.gateway import inference, serving
from services.gateway.deps import model_name_path
from services.gateway.errors import ApiError, TooLarge

log = logging.getLogger(__name__)

_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          415: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}


def _images(request, max_images: int) -> list[bytes]:
    if len(request.inputs) != 1 or request.inputs[0].name != oip.INPUT:
        raise ApiError(f"the model's only input is {oip.INPUT!r}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES" or len(tensor.shape) != 1:
        raise ApiError(f"input {oip.INPUT!r} is BYTES of shape [-1]")
    if tensor.shape[0] > max_images:
        raise TooLarge(f"{tensor.shape[0]} images in one request; the limit is {max_images}")
    try:
        images = (oip.unpack_bytes(request.raw_input_contents[0]) if request.raw_input_contents
                  else list(tensor.contents.bytes_contents))
    except oip.ProtocolError as e:
        raise ApiError(str(e)) from None
    if len(images) != tensor.shape[0]:
        raise ApiError(f"input {oip.INPUT!r} has shape {list(tensor.shape)} but {len(images)} elements")
    return images


def _response(request, version: int, outputs: dict[str, np.ndarray]):
    wanted = [o.name for o in request.outputs] or None
    try:
        selected = oip.select_outputs(outputs, wanted)
    except oip.ProtocolError as e:
        raise ApiError(str(e)) from None
    response = service_pb2.ModelInferResponse(model_name=request.model_name,
                                              model_version=str(version), id=request.id)
    for name, array in selected.items():
        response.outputs.add(name=name, datatype=oip.datatype(array), shape=list(np.shape(array)))
        response.raw_output_contents.append(oip.tensor_binary(array))
    return response


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state):
        self.state = state

    async def _guard(self, context) -> None:
        settings = self.state.settings
        if not settings.protect_predict:
            return
        given = dict(context.invocation_metadata()).get("authorization", "")
        token = given.removeprefix("Bearer ").encode()
        if not any(hmac.compare_digest(token, t.encode()) for t in settings.tokens()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is needed")

    async def _call(self, context, operation):
        await self._guard(context)
        try:
            return await operation()
        except ApiError as e:
            await context.abort(_CODES.get(e.status_code, grpc.StatusCode.INTERNAL), e.message)
        except Exception:  # the client learns that it failed, the log has why
            log.exception("gRPC inference call failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (logged by the gateway)")

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # public, as health is over REST
        return service_pb2.ServerReadyResponse(ready=await inference.server_ready(self.state))

    async def ServerMetadata(self, request, context):
        async def run():
            return inference.server_metadata()

        return service_pb2.ServerMetadataResponse(**await self._call(context, run))

    async def ModelReady(self, request, context):
        async def run():
            await model_name_path(request.name)
            return await inference.model_ready(self.state, request.name, request.version)

        ready = await self._call(context, run)
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request, context):
        async def run():
            await model_name_path(request.name)
            return await inference.model_metadata(self.state, request.name, request.version)

        meta = await self._call(context, run)
        response = service_pb2.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for key in ("inputs", "outputs"):
            for t in meta[key]:
                getattr(response, key).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return response

    async def RepositoryIndex(self, request, context):
        models = await self._call(context, lambda: inference.repository_index(self.state))
        response = service_pb2.RepositoryIndexResponse()
        for m in models:
            response.models.add(name=m["name"], version=m["version"], state=m["state"])
        return response

    async def ModelInfer(self, request, context):
        async def run():
            await model_name_path(request.model_name)
            images = await serving.checked(_images(request, self.state.settings.max_images_per_request),
                                           self.state, media_is_400=True)
            version = serving.parse_version(request.model_version) if request.model_version else None
            result = await serving.predict(self.state, request.model_name, images, version)
            return _response(request, result.version, result.outputs)

        return await self._call(context, run)


async def start(state, host: str, port: int) -> aio.Server:
    server = aio.server(options=[
        ("grpc.max_receive_message_length", state.settings.max_body_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("Open Inference Protocol gRPC on %s:%s", host, port)
    return server
