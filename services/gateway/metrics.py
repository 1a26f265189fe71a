"""Prometheus metrics beyond the per-route ones of prometheus-fastapi-instrumentator.
Each app gets its own registry, so several apps in one process never clash."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry
    batch_size: Histogram
    backend_errors: Counter
    predicted_images: Counter

    @classmethod
    def create(cls) -> GatewayMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            batch_size=Histogram("incept_predict_batch_size", "Images per model call",
                                 buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=registry),
            backend_errors=Counter("incept_backend_errors_total",
                                   "Prediction backend errors", ["backend", "kind"],
                                   registry=registry),
            predicted_images=Counter("incept_predicted_images_total", "Images classified",
                                     ["model"], registry=registry),
        )
