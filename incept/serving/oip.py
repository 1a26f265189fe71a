"""The Open Inference Protocol (KServe v2) for incept's signature: tensors of
its datatypes, an inference request's images (JSON or the binary tensor data
extension), the response (JSON data or binary, per requested output) and model
metadata from the SavedModel's signature. Shared by the gateway's REST routes
and its ``inference.GRPCInferenceService``."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from incept.serving.tfserving_json import INPUT, SIGNATURE

HEADER_LENGTH = "Inference-Header-Content-Length"
PLATFORM = "tensorflow_savedmodel"
# TF dtypes of the signature's tensors and the protocol's datatypes.
DATATYPES = {"DT_FLOAT": "FP32", "DT_DOUBLE": "FP64", "DT_INT32": "INT32", "DT_INT64": "INT64",
             "DT_STRING": "BYTES", "DT_BOOL": "BOOL", "DT_UINT8": "UINT8", "DT_INT8": "INT8",
             "DT_HALF": "FP16", "DT_INT16": "INT16"}
_NUMPY = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "BOOL": "?",
          "UINT8": "u1", "INT8": "i1", "FP16": "<f2", "INT16": "<i2"}


class ProtocolError(ValueError):
    """A request the protocol refuses (HTTP 400, gRPC INVALID_ARGUMENT)."""


class TooManyImages(ProtocolError):
    """More images than a request may hold (the gateway's limit: 413)."""


@dataclass
class InferRequest:
    images: list[bytes]
    id: str | None = None
    outputs: list[str] | None = None  # None: every output
    binary_outputs: set[str] = field(default_factory=set)


def datatype(array: np.ndarray) -> str:
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    if kind == "b":
        return "BOOL"
    return next(dt for dt, np_type in _NUMPY.items()
                if dt != "BOOL" and np.dtype(np_type) == array.dtype.newbyteorder("<"))


def split_body(body: bytes, header_length: str | None, max_images: int) -> tuple[dict, bytes]:
    """The JSON header and the binary part of a body (binary tensor data extension)."""
    if header_length is None:
        header, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} is not a number") from None
        if not 0 <= n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} is outside the body's {len(body)} bytes")
        header, rest = body[:n], body[n:]
    # Counted before parsing: a parser would build every element of a body of
    # millions of empty strings before any limit applies. An image is one element,
    # and base64 has no ','; the rest of a request needs a few dozen.
    if header.count(b",") > max_images + 64:
        raise TooManyImages(f"more than {max_images} images in one request")
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"the request is not JSON: {e}") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request must be a JSON object")
    return request, rest


def unpack_bytes(raw: bytes) -> list[bytes]:
    """A BYTES tensor in binary form: each element a 4-byte little-endian length, then it."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError("a BYTES element's length prefix is cut short")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise ProtocolError("a BYTES element is longer than the binary data")
        out.append(raw[offset:offset + n])
        offset += n
    return out


def pack_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _json_images(data: Any) -> list[bytes]:
    # A JSON string cannot hold JPEG/PNG bytes (they are not UTF-8): each element
    # is the image in base64.
    flat = _flatten(data)
    images = []
    for i, value in enumerate(flat):
        if not isinstance(value, str):
            raise ProtocolError(f"{INPUT}: element {i} must be a string (the image in base64)")
        try:
            images.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise ProtocolError(f"{INPUT}: element {i} is not base64 (send images as base64 "
                                "strings, or as binary data)") from None
    return images


def _flatten(data: Any) -> list:
    if isinstance(data, list):
        return [v for item in data for v in (_flatten(item) if isinstance(item, list) else [item])]
    return [data]


def _images(tensor: dict, binary: bytes, max_images: int) -> list[bytes]:
    if tensor.get("name") != INPUT:
        raise ProtocolError(f"unexpected input {tensor.get('name')!r}: the model's only input is "
                            f"{INPUT!r}")
    if tensor.get("datatype") != "BYTES":
        raise ProtocolError(f"input {INPUT!r} has datatype BYTES, not {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int)):
        raise ProtocolError(f"input {INPUT!r} has shape [-1] (one image per element): got {shape!r}")
    if shape[0] > max_images:  # before any element is unpacked or decoded
        raise TooManyImages(f"{shape[0]} images in one request; the limit is {max_images}")
    images = unpack_bytes(binary) if "data" not in tensor else _json_images(tensor["data"])
    if len(images) != shape[0]:
        raise ProtocolError(f"input {INPUT!r} has shape {shape} but {len(images)} elements")
    return images


def parse_infer(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """``POST .../infer``: the images, the id and the requested outputs."""
    request, binary = split_body(body, header_length, max_images)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"'inputs' must list the model's one input, {INPUT!r}")
    tensor = inputs[0]
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if "data" in tensor or not isinstance(size, int) or size != len(binary):
            raise ProtocolError(f"binary_data_size {size!r} does not match the {len(binary)} "
                                "bytes after the JSON header")
    elif binary or "data" not in tensor:
        raise ProtocolError(f"input {INPUT!r} has neither 'data' nor binary_data_size")
    parsed = InferRequest(images=_images(tensor, binary, max_images), id=_request_id(request))
    _requested_outputs(request, parsed)
    return parsed


def _request_id(request: dict) -> str | None:
    rid = request.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError("'id' must be a string")
    return rid


def _requested_outputs(request: dict, parsed: InferRequest) -> None:
    all_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    outputs = request.get("outputs")
    if outputs is None:
        parsed.binary_outputs = {"*"} if all_binary else set()
        return
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and "name" in o for o in outputs):
        raise ProtocolError("'outputs' must be a list of {\"name\": ...}")
    parsed.outputs = [str(o["name"]) for o in outputs]
    parsed.binary_outputs = {str(o["name"]) for o in outputs
                             if (o.get("parameters") or {}).get("binary_data", all_binary)}


def select_outputs(outputs: dict[str, np.ndarray], wanted: list[str] | None) -> dict[str, np.ndarray]:
    if wanted is None:
        return dict(sorted(outputs.items()))
    unknown = [n for n in wanted if n not in outputs]
    if unknown:
        raise ProtocolError(f"unknown output {unknown[0]!r}; the model's outputs are "
                            f"{', '.join(sorted(outputs))}")
    return {n: outputs[n] for n in wanted}


def _as_bytes(values) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in values]


def tensor_data(array: np.ndarray) -> list:
    """A tensor's data as JSON: flattened in row-major order."""
    flat = np.asarray(array).reshape(-1)
    if datatype(array) == "BYTES":
        return [v.decode("utf-8", errors="replace") for v in _as_bytes(flat)]
    if flat.dtype.kind == "f":  # the shortest text that reads back as the same float
        return [float(s) for s in flat.astype(str)]
    return flat.tolist()


def tensor_binary(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    dt = datatype(array)
    if dt == "BYTES":
        return pack_bytes(_as_bytes(array.reshape(-1)))
    return np.ascontiguousarray(array, dtype=_NUMPY[dt]).tobytes()


def infer_response(model: str, version: int, request: InferRequest,
                   outputs: dict[str, np.ndarray]) -> tuple[dict, bytes]:
    """The response header and the binary data that follows it (empty without binary outputs)."""
    tensors, binary = [], []
    for name, array in select_outputs(outputs, request.outputs).items():
        tensor: dict[str, Any] = {"name": name, "datatype": datatype(array),
                                  "shape": list(np.shape(array))}
        if name in request.binary_outputs or "*" in request.binary_outputs:
            raw = tensor_binary(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            tensor["data"] = tensor_data(array)
        tensors.append(tensor)
    header = {"model_name": model, "model_version": str(version), "outputs": tensors}
    if request.id is not None:
        header["id"] = request.id
    return header, b"".join(binary)


def model_metadata(model: str, versions: list[int], signature_def: dict) -> dict:
    """Model metadata: the ``serving_default`` signature's tensors as the protocol names them."""
    signature = signature_def.get("signature_def", {}).get(SIGNATURE)
    if signature is None:
        raise ProtocolError(f"model {model!r} has no {SIGNATURE!r} signature")

    def tensors(infos: dict) -> list[dict]:
        return [{"name": name, "datatype": DATATYPES.get(info.get("dtype"), info.get("dtype")),
                 "shape": [int(d.get("size", -1)) for d in info.get("tensor_shape", {}).get("dim", [])]}
                for name, info in sorted(infos.items())]

    return {"name": model, "versions": [str(v) for v in versions], "platform": PLATFORM,
            "inputs": tensors(signature.get("inputs", {})),
            "outputs": tensors(signature.get("outputs", {}))}


def json_bytes(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()
