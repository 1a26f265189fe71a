"""The model registry the page shows: every served model's versions with the
manifest the evaluator wrote (job, step, metrics, why it was exported), which
version should serve (pinned or newest), and what the backend serves now."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from incept.layout import Layout, list_versions, pin_version, pinned_version, served_version
from incept.serving.backend import PredictionBackend
from services.gateway.errors import ApiError, ModelNotFound

MANIFEST = "manifest.json"  # incept.export.MANIFEST, without importing TensorFlow here


def _version(model_dir: Path, version: int) -> dict:
    out: dict = {"version": version}
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((model_dir / str(version) / MANIFEST).read_text())
        out.update({k: manifest.get(k) for k in ("job_id", "step", "metrics", "dataset", "net")})
        out["reason"] = manifest.get("export_reason")  # written by the evaluator's bless step
    with contextlib.suppress(OSError):
        out["exported_at"] = (model_dir / str(version)).stat().st_mtime
    return out


async def model_entry(layout: Layout, backend: PredictionBackend, name: str) -> dict:
    model_dir = layout.model(name)
    if not model_dir.is_dir():
        raise ModelNotFound(f"unknown model {name!r}")
    available = []
    with contextlib.suppress(ApiError):  # not loaded yet, or TF Serving away: say so
        status = await backend.model_status(name)
        available = [v.version for v in status.versions if v.state == "AVAILABLE"]
    return {"name": name, "pinned": pinned_version(model_dir), "serving": served_version(model_dir),
            "available": available, "backend": backend.name,
            "versions": [_version(model_dir, v) for v in reversed(list_versions(model_dir))]}


async def pin(layout: Layout, backend: PredictionBackend, name: str, version: int | None) -> dict:
    model_dir = layout.model(name)
    if not model_dir.is_dir():
        raise ModelNotFound(f"unknown model {name!r}")
    try:
        pin_version(model_dir, version, by="gateway")
    except ValueError as e:
        raise ApiError(str(e), status_code=409) from None
    return await model_entry(layout, backend, name)
