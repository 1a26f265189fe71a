"""The serving signature's outputs (see ``incept.export``) decoded per image,
and the JSON answer the gateway and ``incept predict`` give for them."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Prediction:
    labels: list[str]
    scores: list[float]
    ood_score: float
    is_unknown: bool


@dataclass
class PredictResult:
    model: str
    version: int
    outputs: dict  # every output of the signature, batched (numpy arrays)

    @property
    def predictions(self) -> list[Prediction]:
        return predictions_from_outputs(self.outputs, len(self.outputs["ood_score"]))


def predictions_from_outputs(outputs: dict, count: int) -> list[Prediction]:
    """Rows of the signature's batched outputs (numpy arrays or lists)."""
    out = []
    for i in range(count):
        labels = [lb.decode() if isinstance(lb, bytes) else str(lb) for lb in outputs["labels"][i]]
        out.append(Prediction(
            labels=labels,
            scores=[float(s) for s in outputs["scores"][i]],
            ood_score=float(outputs["ood_score"][i]),
            is_unknown=bool(outputs["is_unknown"][i]),
        ))
    return out


def answer_json(result: PredictResult) -> dict:
    """The friendly answer (the gateway's ``PredictResponse`` of /v1/classify,
    and ``incept predict``'s): the top classes and whether the image is unknown."""
    return {
        "model": result.model, "version": result.version,
        "predictions": [{"top": [{"label": lb, "score": _finite(s)}
                                 for lb, s in zip(p.labels, p.scores, strict=False)],
                         "unknown": p.is_unknown, "ood_score": _finite(p.ood_score)}
                        for p in result.predictions],
    }


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: null, as pydantic writes them."""
    return value if math.isfinite(value) else None
