"""A generated image set in the flower_photos layout (``root/<class>/<image>``)
for tests and benchmarks, so nothing needs a download and no image is committed.

Each class has its own hue and its own stripe orientation, so the classes are
easy to tell apart (a tiny net learns them in a few dozen steps), while random
phase, brightness and pixel noise keep every image different.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

FLOWER_CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")

_EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}


def default_class_names(num_classes: int) -> list[str]:
    if num_classes <= len(FLOWER_CLASSES):
        return list(FLOWER_CLASSES[:num_classes])
    return list(FLOWER_CLASSES) + [f"class_{i:02d}" for i in range(len(FLOWER_CLASSES), num_classes)]


def class_image(class_index: int, num_classes: int, size: tuple[int, int],
                rng: np.random.Generator, noise: float = 12.0) -> np.ndarray:
    """One ``(height, width, 3)`` uint8 image of the given class; ``size`` is (width, height)."""
    width, height = size
    hue = class_index / num_classes
    angle = math.pi * class_index / num_classes
    freq = 2 * math.pi / max(6.0, min(width, height) / 4)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.sin(freq * (x * math.cos(angle) + y * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
    base = np.array(_hsv_to_rgb(hue, 0.75, 0.8), dtype=np.float32) * 255.0
    brightness = rng.uniform(0.85, 1.15)
    image = base[None, None, :] * brightness * (0.75 + 0.25 * stripes[..., None])
    image += rng.normal(0.0, noise, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        Image.fromarray(image).save(buf, format="PNG")
    else:
        raise ValueError(f"unknown image format {fmt!r}; use one of {sorted(_EXTENSIONS)}")
    return buf.getvalue()


def write_class_folders(root: str | Path, num_classes: int = 5, per_class: int = 20,
                        size: tuple[int, int] = (64, 48), seed: int = 0, fmt: str = "jpeg",
                        class_names: list[str] | None = None, noise: float = 12.0,
                        quality: int = 90) -> list[str]:
    """Write ``per_class`` images of ``size`` = (width, height) into ``root/<class>/``
    for each class and return the class names (in label order: sorted)."""
    if fmt not in _EXTENSIONS:
        raise ValueError(f"unknown image format {fmt!r}; use one of {sorted(_EXTENSIONS)}")
    names = list(class_names) if class_names is not None else default_class_names(num_classes)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for {num_classes} classes")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for index, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = class_image(index, num_classes, size, rng, noise=noise)
            (folder / f"{name}_{i:04d}{_EXTENSIONS[fmt]}").write_bytes(
                encode(image, fmt, quality=quality))
    return sorted(names)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h, s, v)
