"""TF Serving's REST JSON, as its documentation (``api_rest.md``) defines it:
the ``:predict`` body in row (``instances``) and columnar (``inputs``) form, the
answer (``predictions`` / ``outputs``) with each tensor in its JSON mapping,
model status, model metadata (the SignatureDefMap) and the ``{"error": ...}``
body. The gateway answers in it, and its REST backend and the CLI send it, so a
real TF Serving on either side sees only documented forms."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SIGNATURE = "serving_default"
INPUT = "images"  # the one input of incept's serving signature (incept.export)


class RequestError(ValueError):
    """A body TF Serving would refuse with INVALID_ARGUMENT (HTTP 400)."""


@dataclass
class PredictBody:
    signature_name: str
    images: list[bytes]
    columnar: bool  # answer with "outputs" (columnar) rather than "predictions" (row)


def _binary(value: Any, where: str) -> bytes:
    """A DT_STRING value: ``{"b64": ...}`` for binary data, or a plain (UTF-8) string."""
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}: 'b64' is not valid base64") from None
    if isinstance(value, str):
        return value.encode()
    raise RequestError(f"{where}: expected a base64 object {{\"b64\": ...}} or a string for "
                       f"the DT_STRING input {INPUT!r}")


def _row_images(instances: Any) -> list[bytes]:
    if not isinstance(instances, list):
        raise RequestError("'instances' must be a list: one item per image")
    images = []
    for i, item in enumerate(instances):
        if isinstance(item, dict) and set(item) != {"b64"}:  # named inputs
            unknown = sorted(set(item) - {INPUT})
            if unknown or INPUT not in item:
                raise RequestError(f"instances[{i}]: the signature's only input is {INPUT!r}"
                                   + (f", not {', '.join(map(repr, unknown))}" if unknown else ""))
            item = item[INPUT]
        images.append(_binary(item, f"instances[{i}]"))
    return images


def _columnar_images(inputs: Any) -> list[bytes]:
    if isinstance(inputs, dict) and set(inputs) != {"b64"}:
        unknown = sorted(set(inputs) - {INPUT})
        if unknown or INPUT not in inputs:
            raise RequestError(f"inputs: the signature's only input is {INPUT!r}"
                               + (f", not {', '.join(map(repr, unknown))}" if unknown else ""))
        inputs = inputs[INPUT]
    if not isinstance(inputs, list):
        raise RequestError(f"inputs: {INPUT!r} has shape [-1]: give a list of images")
    return [_binary(v, f"inputs[{i}]") for i, v in enumerate(inputs)]


def parse_predict(body: bytes | str) -> PredictBody:
    """The ``:predict`` request body; raises RequestError with TF Serving's meaning."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"JSON Parse error: {e}") from None
    if not isinstance(request, dict):
        raise RequestError("JSON Value is not an object: the body is {\"instances\": [...]} "
                           "or {\"inputs\": ...}")
    signature = request.get("signature_name", SIGNATURE)
    if not isinstance(signature, str):
        raise RequestError("'signature_name' must be a string")
    has_rows, has_columns = "instances" in request, "inputs" in request
    if has_rows == has_columns:
        raise RequestError("Missing 'inputs' or 'instances' key" if not has_rows else
                           "Not both 'instances' and 'inputs' may be given")
    images = _row_images(request["instances"]) if has_rows else _columnar_images(request["inputs"])
    return PredictBody(signature or SIGNATURE, images, columnar=has_columns)


def predict_request(images: list[bytes], signature_name: str = SIGNATURE) -> dict:
    """The columnar request the clients send (the answer comes back batched)."""
    return {"signature_name": signature_name,
            "inputs": {INPUT: [{"b64": base64.b64encode(img).decode("ascii")} for img in images]}}


# -- tensors to JSON ---------------------------------------------------------


def tensor_json(name: str, array: np.ndarray) -> Any:
    """One output tensor in TF Serving's JSON mapping: numbers, booleans, strings
    (base64 objects when the output's name ends in ``_bytes``), nested by shape."""
    array = np.asarray(array)
    kind = array.dtype.kind
    if kind in "OSU":
        def text(v):
            raw = v if isinstance(v, bytes) else str(v).encode()
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(raw).decode("ascii")}
            return raw.decode("utf-8", errors="replace")
        return _nested(array, text)
    if kind == "f":
        # The shortest decimal that reads back as the same value of the tensor's
        # precision (a float32 0.1 is written 0.1, not 0.10000000149011612).
        return _nested(array.astype(str), float)
    return array.tolist()  # bool, ints


def _nested(array: np.ndarray, convert) -> Any:
    if array.ndim == 0:
        return convert(array.item() if array.dtype.kind != "O" else array[()])
    return [_nested(a, convert) for a in array] if array.ndim > 1 else [convert(v) for v in array]


def predict_response(outputs: dict[str, np.ndarray], columnar: bool) -> dict:
    """``{"predictions": [...]}`` (one object per instance, or values when the
    signature has one output) or ``{"outputs": {...}}`` (or the one tensor)."""
    encoded = {name: tensor_json(name, value) for name, value in sorted(outputs.items())}
    if columnar:
        return {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}
    if len(encoded) == 1:
        return {"predictions": next(iter(encoded.values()))}
    count = len(next(iter(encoded.values()))) if encoded else 0
    return {"predictions": [{name: value[i] for name, value in encoded.items()}
                            for i in range(count)]}


# The numpy type each TF dtype of a signature reads back into from JSON.
_NUMPY_TYPES = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16,
                "DT_INT32": np.int32, "DT_INT64": np.int64, "DT_INT16": np.int16,
                "DT_INT8": np.int8, "DT_UINT8": np.uint8, "DT_BOOL": np.bool_}


def output_types(signature_defs: dict, signature: str = SIGNATURE) -> dict[str, Any]:
    """Each output's numpy type, from a metadata answer's SignatureDefMap (JSON
    numbers carry no precision: a float32 output would read back as float64)."""
    outputs = signature_defs.get("signature_def", {}).get(signature, {}).get("outputs", {})
    return {name: _NUMPY_TYPES.get(info.get("dtype"), object) for name, info in outputs.items()}


def outputs_from_json(answer: dict, types: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The batched outputs of a columnar answer (what the REST clients read),
    each of its signature's type when ``types`` says."""
    outputs = answer.get("outputs")
    if not isinstance(outputs, dict):
        raise RequestError("the answer has no 'outputs' object")
    types = types or {}
    return {name: np.asarray(value, dtype=types.get(name)) for name, value in outputs.items()}


def dumps(body: Any) -> bytes:
    """JSON with TF Serving's NaN/Infinity tokens for non-finite floats."""
    return json.dumps(body, allow_nan=True, separators=(",", ":")).encode()


# -- status and metadata ---------------------------------------------------------

OK = {"error_code": "OK", "error_message": ""}


def version_status(version: int, state: str, error: str = "") -> dict:
    """One ModelVersionStatus (int64 as a string, as proto3's JSON mapping writes it)."""
    status = OK if not error else {"error_code": "UNKNOWN", "error_message": error}
    return {"version": str(version), "state": state, "status": status}


def signature_def_map(saved_model_dir: Path) -> dict[str, Any]:
    """The SavedModel's signatures as a JSON SignatureDefMap (proto field names,
    defaults printed), which is what TF Serving's metadata API returns."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    meta_graph = next(mg for mg in saved.meta_graphs if "serve" in mg.meta_info_def.tags)
    return signature_map_json(meta_graph.signature_def)


def signature_map_json(signature_defs) -> dict:
    """A protobuf map<string, SignatureDef> as TF Serving prints it."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in signature_defs.items():  # all of them, __saved_model_init_op too
        sig_map.signature_def[key].CopyFrom(sig)
    return json_format.MessageToDict(sig_map, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def metadata_json(name: str, version: int, signature_defs: dict) -> dict:
    """GetModelMetadataResponse for ``metadata_field: signature_def``."""
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": signature_defs}}
