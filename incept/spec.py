"""The job spec: one validated schema shared by the CLI, the gateway and the
trainer. Field names and defaults follow slim's ``train_image_classifier.py``
flags where they exist."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from incept.errors import UserError
from incept.layout import NAME_RE, Layout
from incept.resources import INPUT_BYTES_PER_PIXEL, MAX_STEPS

# One float32 input batch may not exceed this, whatever the worker has
# (4096 x 1024 px would be 51.5 GB).
MAX_BATCH_INPUT_BYTES = 4 * 1024**3
MAX_EPOCHS = 100_000
MAX_KEEP_CHECKPOINTS = 1000



def under_scope(name: str, scopes: Iterable[str]) -> bool:
    """slim's scope rule: ``name`` is one of ``scopes`` or lies below one
    (``A/B`` is under ``A``; ``AB`` is not). A trailing ``/`` on a scope is ignored."""
    return any(name == s or name.startswith(s + "/") for s in (x.rstrip("/") for x in scopes))


def is_head_only(spec: JobSpec) -> bool:
    """slim's trainable_scopes are all within the net's logits heads."""
    from incept.nets import net_info

    heads = net_info(spec.model_name).head_scopes
    return bool(spec.trainable_scopes) and all(
        under_scope(s.rstrip("/"), heads) for s in spec.trainable_scopes)

class SpecError(UserError, ValueError):
    """An invalid spec, with every problem listed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid job spec:\n" + "\n".join(f"  - {p}" for p in problems))


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="A converted dataset: its name under datasets/, or a path inside the data root.")
    model_name: str = "inception_v4"
    image_size: int | None = Field(None, ge=16, le=1024, description="Default: the net's own size.")
    served_model_name: str | None = Field(
        None, description="Name under models/ that blessed exports go to (default: the dataset's name).")

    # Base checkpoint, slim style.
    checkpoint: str | None = Field(None, description="Base checkpoint prefix (slim or incept) to start from.")
    exclude_scopes: list[str] = Field(default_factory=list)
    ignore_missing_vars: bool = False
    trainable_scopes: list[str] = Field(default_factory=list, description="Empty: every variable trains.")

    # Optimisation.
    optimizer: Literal["adam", "sgd", "momentum", "rmsprop"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    rmsprop_decay: float = Field(0.9, ge=0, lt=1)
    opt_epsilon: float = Field(1.0, gt=0, description="slim's default 1.0 for adam and rmsprop.")
    learning_rate: float = Field(0.01, gt=0)
    learning_rate_decay_type: Literal["exponential", "fixed"] = "exponential"
    learning_rate_decay_factor: float = Field(0.94, gt=0, le=1)
    num_epochs_per_decay: float = Field(2.0, gt=0)
    moving_average_decay: float | None = Field(None, gt=0, lt=1)
    weight_decay: float = Field(4e-5, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    aux_loss_weight: float = Field(0.4, ge=0)
    dropout_keep_prob: float | None = Field(None, gt=0, le=1,
                                            description="Keep probability before the logits (default: the net's, 0.8).")
    batch_size: int = Field(32, ge=1, le=4096)
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    epochs: float | None = Field(None, gt=0, le=MAX_EPOCHS)

    # Data.
    augment: bool = Field(True, description="slim's train preprocessing (random crop, flip, colour).")
    augmented_views: int = Field(0, ge=0, le=64,
                                 description="Head-only path: cached augmented views per image (0 = eval view only).")

    # Checkpoints.
    checkpoint_every_steps: int | None = Field(None, ge=1)
    checkpoint_every_seconds: float | None = Field(600.0, gt=0)
    keep_checkpoints: int = Field(5, ge=1, le=MAX_KEEP_CHECKPOINTS)

    # Evaluation and export.
    bless_threshold: float | None = Field(None, ge=0, le=1,
                                          description="Export only checkpoints at least this accurate.")
    replace: bool = Field(False, description="Blessed exports may replace a served version trained "
                                             "on another dataset or class list (else they must beat it).")

    # Hardware.
    mixed_precision: bool | None = Field(None, description="Default: on when a GPU is present.")
    xla: bool | None = Field(None, description="Default: on with a GPU, and on a CPU for the full path (not for head-only).")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        problems = _cross_field_problems(self.__dict__)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def serving_name(self) -> str:
        return self.served_model_name or Path(self.dataset).name

    def resolved_image_size(self) -> int:
        from incept.nets import net_info

        return self.image_size or net_info(self.model_name).default_image_size

    def total_steps(self, num_train: int) -> int:
        """Optimizer steps of the whole job over ``num_train`` training images."""
        if self.max_steps is not None:
            return self.max_steps
        assert self.epochs is not None  # the validator requires max_steps or epochs
        return max(1, -(-int(self.epochs * num_train) // self.batch_size))

    def dataset_dir(self, layout: Layout) -> Path:
        """The dataset folder, resolved inside the data root (a bare name means datasets/<name>)."""
        if "/" not in self.dataset and NAME_RE.fullmatch(self.dataset):
            path = layout.dataset(self.dataset)
        else:
            path = layout.resolve_inside(self.dataset)
        return layout.resolve_inside(path)


def _cross_field_problems(values: dict[str, Any]) -> list[str]:
    """Checks across fields. Also run on the raw input when some field is
    invalid (pydantic then skips the model validator), so every problem is listed."""
    from incept.nets import net_info

    problems: list[str] = []
    model_name: Any = values.get("model_name")  # raw input: not yet known to be a str
    try:
        info = net_info(model_name)
    except (ValueError, TypeError) as e:
        problems.append(f"model_name: {e}")
        info = None
    if (values.get("max_steps") is None) == (values.get("epochs") is None):
        problems.append("set exactly one of max_steps or epochs")
    if info is not None:
        for field in ("exclude_scopes", "trainable_scopes"):
            scopes = values.get(field) or []
            for scope in scopes if isinstance(scopes, list) else []:
                if not isinstance(scope, str):
                    continue
                if not under_scope(scope, [info.scope]):
                    problems.append(f"{field}: {scope!r} is not under the model's scope {info.scope!r}")
        size = values.get("image_size")
        if isinstance(size, int) and size < info.min_image_size:
            problems.append(f"image_size: {model_name} needs at least {info.min_image_size} px")
        problems += _batch_problems(values.get("batch_size"), size or info.default_image_size)
    served = values.get("served_model_name")
    if served is not None and not (isinstance(served, str) and NAME_RE.fullmatch(served)):
        problems.append("served_model_name: use letters, digits, '_', '-', '.'")
    return problems


def _batch_problems(batch_size: object, size: object) -> list[str]:
    if not (isinstance(batch_size, int) and isinstance(size, int)):
        return []
    needed = batch_size * size * size * INPUT_BYTES_PER_PIXEL
    if needed <= MAX_BATCH_INPUT_BYTES:
        return []
    return [f"batch_size: {batch_size} x image_size {size}: one float32 input batch is "
            f"{needed / 1024**3:.1f} GiB, more than {MAX_BATCH_INPUT_BYTES // 1024**3} GiB; "
            "use a smaller batch or image size"]


def _problems(err: ValidationError) -> list[str]:
    out: list[str] = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        out.extend(f"{loc}: {m}" if loc else m for m in msg.split("\n"))
    return out


def parse_spec(data: dict[str, Any]) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        problems = _problems(e)
        if not any(err["type"] == "value_error" and not err["loc"] for err in e.errors()):
            # Field errors stopped pydantic before the cross-field checks: run them too.
            values = {name: f.get_default(call_default_factory=True)
                      for name, f in JobSpec.model_fields.items() if not f.is_required()}
            values.update(data)
            problems += [p for p in _cross_field_problems(values) if p not in problems]
        raise SpecError(problems) from None


def load_spec(path: str | Path) -> JobSpec:
    """Read a spec from YAML or JSON; every problem is listed in one SpecError."""
    text = Path(path).read_text()
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SpecError([f"{path}: not valid YAML/JSON: {e}"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"{path}: a spec is a mapping of fields"])
    return parse_spec(data)
