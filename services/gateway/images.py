"""Prediction inputs of the gateway's own route, in memory only (never on disk):
the JSON body ``{"instances": [{"b64": ...}]}`` or a multipart upload of
images; and the checks every prediction route applies: each a JPEG or PNG with
a readable header, within the size limits."""

from __future__ import annotations

import asyncio
import binascii
import io
import warnings
from contextlib import asynccontextmanager

import pybase64
from PIL import Image
from pydantic import ValidationError
from python_multipart.multipart import MultipartParser, parse_options_header

from incept.settings import Settings
from services.gateway.errors import (
    ApiError,
    BackendUnavailable,
    BadImage,
    TooLarge,
    UnsupportedMedia,
)
from services.gateway.schemas import PredictRequest

_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}


def image_format(data: bytes) -> str | None:
    return next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)


class Images(list):
    """A request's encoded images, and the pixels they decode to (from their headers)."""

    pixels: int = 0


def check_image(data: bytes, what: str, settings: Settings) -> int:
    """Check one image from its bytes and header; returns its pixel count."""
    if len(data) > settings.max_image_bytes:
        raise TooLarge(f"{what} is larger than {settings.max_image_bytes} bytes")
    if not data:
        raise BadImage(f"{what} is empty")
    fmt = image_format(data)
    if fmt is None:
        raise UnsupportedMedia(f"{what} is not a JPEG or PNG image")
    # Only the header is parsed here (size, pixel count: cheap); the pixels are
    # decoded once, by the model, which reports a corrupt image as a 400.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                pixels = img.width * img.height
                if pixels > settings.max_image_pixels:
                    raise TooLarge(f"{what} has {img.width}x{img.height} pixels; the limit is "
                                   f"{settings.max_image_pixels}")
                return pixels
    except (TooLarge, UnsupportedMedia):
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        raise BadImage(f"{what} is a {fmt} that cannot be decoded: {e}") from None


def check_instance_count(body: bytes, max_images: int) -> None:
    """Counted before a JSON body is parsed: a parser builds every item of a 20 MB
    body of {"b64": ""} objects (measured: ~800 MB, seconds of CPU) before any
    length limit applies. An image is at most two objects, and base64 has no '{'."""
    if body.count(b"{") > 2 * max_images + 2:
        raise TooLarge(f"more than {max_images} instances in one request")


def images_from_json(body: bytes, max_images: int) -> list[bytes]:
    check_instance_count(body, max_images)
    # Parsed and validated in one pass by pydantic's JSON parser, and the base64
    # decoded (and checked) by pybase64's SIMD code: a 25 kB JPEG arrives as 34 kB
    # of base64, which the standard library decodes 25x slower.
    try:
        request = PredictRequest.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        if errors and errors[0]["type"] == "json_invalid":
            raise ApiError(f"invalid JSON: {errors[0]['ctx']['error']}", status_code=422) from None
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors]
        raise ApiError('expected {"instances": [{"b64": "<base64 image>"}, ...]}', status_code=422,
                       problems=problems[:20]) from None
    images = []
    for i, inst in enumerate(request.instances):
        b64 = inst.b64 if hasattr(inst, "b64") else next(iter(inst.values())).b64
        try:
            images.append(pybase64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(f"instances[{i}].b64 is not valid base64") from None
    return images


def images_from_multipart(body: bytes, content_type: str, max_images: int) -> list[bytes]:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError("multipart body without a boundary")
    parts: list[bytearray] = []
    filenames: list[bool] = []
    header_name = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}

    def on_part_begin():
        headers.clear()
        if len(parts) >= 2 * max_images:  # counted while parsing, not after
            raise TooLarge(f"more than {max_images} parts in one request")
        parts.append(bytearray())

    def on_part_data(data, start, end):
        parts[-1] += data[start:end]

    def on_header_field(data, start, end):
        header_name.extend(data[start:end])

    def on_header_value(data, start, end):
        header_value.extend(data[start:end])

    def on_header_end():
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished():
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        filenames.append(b"filename" in disp)

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
    })
    try:
        parser.write(body)
        parser.finalize()
    except TooLarge:
        raise
    except Exception as e:
        raise ApiError(f"malformed multipart body: {e}") from None
    images = [bytes(p) for p, is_file in zip(parts, filenames, strict=False) if is_file]
    if not images:
        raise ApiError("the multipart body has no file parts: upload images as files")
    return images


def parse_images(body: bytes, content_type: str, max_images: int) -> list[bytes]:
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        return images_from_json(body, max_images)
    if kind == "multipart/form-data":
        return images_from_multipart(body, content_type, max_images)
    raise UnsupportedMedia("send application/json ({\"instances\": [{\"b64\": ...}]}) "
                           "or multipart/form-data with image files")


def check_images(images: list[bytes], settings: Settings) -> Images:
    """The per-request limits every prediction route applies, whatever its protocol:
    each image checked from its header, and their pixels within the request's
    budget. Nothing is decoded here, and nothing too big ever is."""
    if not images:
        raise ApiError("no images in the request")
    if len(images) > settings.max_images_per_request:
        raise TooLarge(f"{len(images)} images in one request; the limit is "
                       f"{settings.max_images_per_request}")
    checked = Images(images)
    for i, img in enumerate(images):
        checked.pixels += check_image(img, f"image {i}", settings)
        if checked.pixels > settings.max_request_pixels:
            raise TooLarge(f"the images decode to more than {settings.max_request_pixels} pixels "
                           "(max_request_pixels): send fewer or smaller images per request")
    return checked


class PixelBudget:
    """Pixels being decoded at once across all prediction requests of this
    replica. A request waits for room (a request alone always gets it), and
    past ``timeout_s`` answers 503: a flood of large images queues instead of
    decoding side by side until memory runs out."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self._room = asyncio.Condition()

    def _fits(self, pixels: int) -> bool:
        return self.in_use == 0 or self.in_use + pixels <= self.limit

    @asynccontextmanager
    async def hold(self, pixels: int, timeout_s: float):
        async with self._room:
            try:
                await asyncio.wait_for(self._room.wait_for(lambda: self._fits(pixels)), timeout_s)
            except TimeoutError:
                raise BackendUnavailable("the gateway is busy with other large images; try again",
                                         retry_after_s=2) from None
            self.in_use += pixels
        try:
            yield
        finally:
            async with self._room:
                self.in_use -= pixels
                self._room.notify_all()
