"""Paths on the shared volume. Every service mounts the same volume at
``Settings.data_root``; this module is the one place that knows its shape::

    <root>/datasets/<name>/        converted TFRecords, labels.txt, dataset.json
    <root>/datasets/<name>/thumbnails/<key>.jpg   small JPEGs for the page (thumbnail_key)
    <root>/uploads/                 dataset archives while they are unpacked
    <root>/runs/<job_id>/spec.json  the job spec as submitted
    <root>/runs/<job_id>/checkpoints/   tf.train.CheckpointManager
    <root>/runs/<job_id>/train/     TensorBoard training summaries
    <root>/runs/<job_id>/eval/<step>.json   an evaluation result (written last, atomically)
    <root>/runs/<job_id>/eval/<step>.error.json   why a checkpoint cannot be evaluated
    <root>/runs/<job_id>/eval/       and TensorBoard eval summaries
    <root>/runs/<job_id>/eval/<step>.images.json   per-image validation results
    <root>/models/<model_name>/<version>/   SavedModels polled by TF Serving
    <root>/models/<model_name>/serving.json  the pinned version, if any (else the newest serves)
    <root>/cache/features/          frozen-backbone features for head-only jobs
    <root>/pretrained/              downloaded base checkpoints
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Used with fullmatch only: "$" would also accept a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# tf.train.CheckpointManager's files: ckpt-<step>.index and ckpt-<step>.data-<i>-of-<n>.
CHECKPOINT_NAME = "ckpt"
_CHECKPOINT_INDEX_RE = re.compile(rf"{CHECKPOINT_NAME}-(\d+)\.index")
_CHECKPOINT_SHARD_RE = re.compile(r"\.data-\d+-of-(\d+)\Z")


DATASET_THUMBNAILS = "thumbnails"
_THUMBNAIL_KEY_RE = re.compile(r"^[0-9a-f]{20}$")


def thumbnail_key(rel: str) -> str:
    """The name (without .jpg) of an image's thumbnail in its dataset, from the
    relative path the TFRecords keep as ``image/filename``."""
    return hashlib.sha1(rel.encode()).hexdigest()[:20]


def thumbnail_file(dataset_dir: Path, key: str) -> Path:
    """Where a converted dataset keeps the thumbnail ``key`` (refusing any other key)."""
    if not _THUMBNAIL_KEY_RE.match(key):
        raise ValueError(f"invalid thumbnail key {key!r}")
    return dataset_dir / DATASET_THUMBNAILS / f"{key}.jpg"


def check_name(name: str, what: str = "name") -> str:
    """Names become folder names: refuse anything that could escape a folder."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_', '-', '.', "
            "starting with a letter or digit"
        )
    return name


def new_job_id(stem: str) -> str:
    """``<stem>-<UTC time>-<random>``: readable, sortable, unique, and a valid name."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(stem).name).strip("-_")[:32] or "job"
    if not stem[0].isalnum():
        stem = "job-" + stem
    return check_name(f"{stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-"
                      f"{secrets.token_hex(3)}", "job id")


def list_versions(model_dir: Path) -> list[int]:
    """Integer version folders under a model's folder, ascending: what TF Serving
    serves (export renames each finished version into place, so each is whole)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def eval_rank(result: dict[str, Any]) -> tuple[float, float, int]:
    """How evaluation results compare: the highest accuracy, then the lowest
    loss, then the earliest step (it was exported first)."""
    loss = result.get("loss")
    loss = float(loss) if isinstance(loss, int | float) and math.isfinite(loss) else math.inf
    return (result["accuracy"], -loss, -result["step"])


def best_of(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best of evaluation results by ``eval_rank`` (None: none has an accuracy)."""
    scored = [r for r in results
              if isinstance(r.get("accuracy"), int | float) and isinstance(r.get("step"), int)]
    return max(scored, key=eval_rank, default=None)


SERVING_CHOICE = "serving.json"


def pinned_version(model_dir: Path) -> int | None:
    """The version someone pinned for ``model_dir`` (``serving.json``), or None:
    then the newest version serves. TF Serving's config (``model_version_policy:
    specific``), the in-process backend and the gateway all read it here."""
    try:
        pinned = json.loads((Path(model_dir) / SERVING_CHOICE).read_text()).get("pinned")
    except (OSError, ValueError, AttributeError):
        return None
    return pinned if isinstance(pinned, int) and not isinstance(pinned, bool) and pinned > 0 else None


def served_version(model_dir: Path) -> int | None:
    """The version that should serve: the pinned one while it exists, else the newest."""
    versions = list_versions(model_dir)
    pinned = pinned_version(model_dir)
    if pinned in versions:
        return pinned
    return versions[-1] if versions else None


def pin_version(model_dir: Path, version: int | None, **why: Any) -> None:
    """Pin ``version`` (it must exist), or unpin with None (back to the newest).
    Written atomically: a reader sees the old choice or the new one."""
    from incept.fsutil import write_json_atomic

    path = Path(model_dir) / SERVING_CHOICE
    if version is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    if version not in list_versions(model_dir):
        raise ValueError(f"{Path(model_dir).name} has no version {version}")
    write_json_atomic(path, {"pinned": int(version), "pinned_at": time.time(), **why})


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def job_id(self) -> str:
        return self.root.name

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint_prefix(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_NAME}-{int(step)}"

    def complete_checkpoints(self) -> list[int]:
        """Steps of the complete checkpoints, ascending: the index and every data
        shard it names exist. TensorFlow writes the shards first and the index last
        (each under a temporary name), so a reader never sees an index without its
        data. Plain file checks, so readers need not import TensorFlow."""
        if not self.checkpoints.is_dir():
            return []
        steps = []
        for index in self.checkpoints.iterdir():
            m = _CHECKPOINT_INDEX_RE.fullmatch(index.name)
            if not m:
                continue
            try:
                if index.stat().st_size == 0:
                    continue
                prefix = index.name[: -len(".index")]
                shards = [s for s in (_CHECKPOINT_SHARD_RE.search(p.name)
                                      for p in self.checkpoints.glob(f"{prefix}.data-*")) if s]
            except OSError:  # deleted by retention while we looked
                continue
            if shards and len(shards) == int(shards[0].group(1)):
                steps.append(int(m.group(1)))
        return sorted(steps)

    @property
    def train_logs(self) -> Path:
        return self.root / "train"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def eval_result(self, step: int) -> Path:
        return self.eval_dir / f"{int(step)}.json"

    def eval_error(self, step: int) -> Path:
        return self.eval_dir / f"{int(step)}.error.json"

    def read_eval(self, step: int) -> dict[str, Any] | None:
        """The evaluation result of ``step``, or None (none, or not readable yet)."""
        record = _read_json(self.eval_result(step))
        return record if isinstance(record, dict) else None

    def read_eval_error(self, step: int) -> dict[str, Any] | None:
        record = _read_json(self.eval_error(step))
        return record if isinstance(record, dict) else None

    def evaluated_steps(self) -> set[int]:
        if not self.eval_dir.is_dir():
            return set()
        return {int(p.stem) for p in self.eval_dir.glob("*.json") if p.stem.isdigit()}

    def failed_steps(self) -> set[int]:
        """Steps with an error record (a result written later wins: see ``evaluated_steps``)."""
        if not self.eval_dir.is_dir():
            return set()
        return {int(p.name.split(".")[0]) for p in self.eval_dir.glob("*.error.json")
                if p.name.split(".")[0].isdigit()}

    def evaluations(self) -> list[dict[str, Any]]:
        """Every evaluation result of the run, by step."""
        results = (self.read_eval(step) for step in self.evaluated_steps())
        return sorted((r for r in results if r is not None and isinstance(r.get("step"), int)),
                      key=lambda r: r["step"])

    def best_evaluation(self) -> dict[str, Any] | None:
        return best_of(self.evaluations())

    def eval_images(self, step: int) -> Path:
        """Every validation image's outcome at ``step`` (file, thumbnail key, true and
        predicted class, score, loss, open-set score), written before the result."""
        return self.eval_dir / f"{int(step)}.images.json"

    @property
    def status(self) -> Path:
        """The trainer's last known state, mirrored from Redis so it survives Redis."""
        return self.root / "status.json"


@dataclass(frozen=True)
class Layout:
    root: Path
    # Folders outside the root that base checkpoints may also come from (a setting).
    checkpoint_roots: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())
        object.__setattr__(self, "checkpoint_roots",
                           tuple(Path(r).resolve() for r in self.checkpoint_roots))

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def dataset(self, name: str) -> Path:
        return self.datasets / check_name(name, "dataset name")

    def dataset_thumbnail(self, name: str, key: str) -> Path:
        return thumbnail_file(self.dataset(name), key)

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, job_id: str) -> RunLayout:
        return RunLayout(self.runs / check_name(job_id, "job id"))

    def all_runs(self) -> list[RunLayout]:
        """Every run folder with a valid job id, by id."""
        if not self.runs.is_dir():
            return []
        return [RunLayout(p) for p in sorted(self.runs.iterdir())
                if p.is_dir() and NAME_RE.fullmatch(p.name) and ".." not in p.name]

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, name: str) -> Path:
        return self.models / check_name(name, "model name")

    def model_names(self) -> list[str]:
        """Served models: the folders under models/ with a valid name, sorted."""
        if not self.models.is_dir():
            return []
        return sorted(p.name for p in self.models.iterdir()
                      if p.is_dir() and NAME_RE.fullmatch(p.name) and ".." not in p.name)

    def model_versions(self, name: str) -> list[int]:
        return list_versions(self.model(name))

    @property
    def feature_cache(self) -> Path:
        return self.root / "cache" / "features"

    @property
    def pretrained(self) -> Path:
        return self.root / "pretrained"

    def resolve_inside(self, path: str | Path) -> Path:
        """Resolve a user-given path (relative to the root, or absolute) and refuse
        anything that lands outside the root, symlinks included."""
        p = Path(path)
        full = (p if p.is_absolute() else self.root / p).resolve()
        if full != self.root and self.root not in full.parents:
            raise ValueError(f"path {str(path)!r} is outside the data root")
        return full

    def base_checkpoint(self, value: str | Path) -> Path:
        """A spec's base checkpoint prefix, confined to the data root and the
        ``checkpoint_roots``. A relative path is looked up under the root, then
        under pretrained/; ``..`` and symlinks (of the prefix and of every file
        beside it) are resolved before the check, so nothing leads outside. The
        refusal reads the same whether or not the path exists."""
        p = Path(value)
        candidates = [p] if p.is_absolute() else [self.root / p, self.pretrained / p]
        allowed = (self.root, *self.checkpoint_roots)
        found = [_prefix_files(c) for c in candidates]
        if not all(_within(f, allowed) for files in found for f in files):
            where = "the data root" + (" or the allowed checkpoint roots" if self.checkpoint_roots else "")
            raise ValueError(f"checkpoint {str(value)!r} is not inside {where}")
        return next((files[0] for files in found if files[1:]), found[0][0])

    def ensure(self) -> Layout:
        for d in (self.datasets, self.uploads, self.runs, self.models, self.feature_cache,
                  self.pretrained):
            d.mkdir(parents=True, exist_ok=True)
        return self


def _within(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _prefix_files(prefix: Path) -> list[Path]:
    """The resolved prefix, then every file TensorFlow would open for it (the
    prefix itself for a V1 checkpoint, ``.index`` and ``.data-*`` for V2),
    each with its symlinks resolved."""
    try:
        prefix = prefix.resolve()
        files = [prefix]
        if prefix.parent.is_dir():
            files += [p.resolve() for p in prefix.parent.iterdir() if p.name == prefix.name or (
                p.name.startswith(prefix.name)
                and p.name[len(prefix.name):].startswith((".index", ".data-", ".meta")))]
    except (OSError, RuntimeError):
        return [prefix, Path("/")]  # unreadable: treat it as outside
    return files
