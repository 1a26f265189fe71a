"""Reading one source image: decode it fully (so truncated files are caught),
and bring anything TensorFlow's decoders would mishandle to 8-bit RGB."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Formats stored as they are when already 8-bit RGB; everything else is re-encoded.
_KEEP_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
# Pillow's own decompression-bomb limit (it warns above it, refuses at twice it).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


@dataclass
class SourceImage:
    """The result of reading one file: ``encoded`` is None when it was skipped."""

    path: Path
    sha256: str
    encoded: bytes | None = None
    format: str = ""
    height: int = 0
    width: int = 0
    reason: str = ""        # why it was skipped
    converted: str = ""     # e.g. "CMYK -> RGB" when it was re-encoded
    thumbnail: bytes | None = None  # a small JPEG, when one was asked for


def thumbnail_jpeg(image: Image.Image, size: int) -> bytes:
    """A JPEG at most ``size`` px on its longer side, for the page."""
    small = to_rgb8(image) if image.mode != "RGB" else image.copy()
    small.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=80)
    return out.getvalue()


def read_source_image(path: Path, jpeg_quality: int = 95, thumbnail_px: int | None = None) -> SourceImage:
    """Read and check one file; with ``thumbnail_px``, also a small JPEG of it."""
    result = _read_source_image(path, jpeg_quality)
    if thumbnail_px and result.encoded is not None:
        with Image.open(io.BytesIO(result.encoded)) as image:
            result.thumbnail = thumbnail_jpeg(image, thumbnail_px)
    return result


def _read_source_image(path: Path, jpeg_quality: int) -> SourceImage:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return SourceImage(path, "", reason=f"unreadable: {e.strerror or e}")
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return SourceImage(path, digest, reason="empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        fmt = image.format
        if image.width * image.height > MAX_PIXELS:
            return SourceImage(path, digest, reason=f"image too large ({image.width}x{image.height})")
        image.load()
    except UnidentifiedImageError:
        return SourceImage(path, digest, reason="not an image")
    except Image.DecompressionBombError:
        return SourceImage(path, digest, reason="image too large (decompression bomb guard)")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return SourceImage(path, digest, reason=f"truncated or corrupt image: {e}")
    width, height = image.size
    if width < 1 or height < 1:
        return SourceImage(path, digest, reason="image has no pixels")
    if fmt in _KEEP_FORMATS and image.mode == "RGB" and not _is_16bit_png(image):
        return SourceImage(path, digest, data, _KEEP_FORMATS[fmt], height, width)
    mode = image.mode
    rgb = to_rgb8(image)
    out = io.BytesIO()
    if fmt == "JPEG":
        rgb.save(out, format="JPEG", quality=jpeg_quality)
        new_fmt = "jpeg"
    else:
        rgb.save(out, format="PNG")
        new_fmt = "png"
    note = f"{fmt} {mode}{' 16-bit' if _is_16bit_png(image) else ''} -> 8-bit RGB {new_fmt.upper()}"
    return SourceImage(path, digest, out.getvalue(), new_fmt, height, width, converted=note)


def _is_16bit_png(image: Image.Image) -> bool:
    return image.format == "PNG" and (image.mode.startswith("I") or image.info.get("bits") == 16)


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB. Alpha is dropped (as ``tf.io.decode_png(channels=3)`` does, so
    training and serving see the same pixels); 16-bit and 32-bit integer
    grey levels are scaled, not clipped."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return image.convert("RGBA").convert("RGB") if mode != "RGBA" else image.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")
