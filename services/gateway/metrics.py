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


class PlatformCollector:
    """Read at scrape time, for the dashboards: jobs by state (Redis's live job
    state) and evaluations recorded (the eval results on the shared volume).
    A scrape that cannot read them reports what it could."""

    def __init__(self, jobstate, layout, max_jobs: int = 1000):
        self.jobstate = jobstate
        self.layout = layout
        self.max_jobs = max_jobs

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        jobs = GaugeMetricFamily("incept_jobs", "Jobs by state", labels=["state"])
        counts: dict[str, int] = {}
        try:
            for job_id in self.jobstate.list_ids(self.max_jobs):
                state = (self.jobstate.get(job_id) or {}).get("state", "unknown")
                counts[str(state)] = counts.get(str(state), 0) + 1
        except Exception:  # Redis down: the scrape still answers
            pass
        for state, count in sorted(counts.items()):
            jobs.add_metric([state], count)
        yield jobs
        evaluations = CounterMetricFamily("incept_evaluations", "Checkpoint evaluations recorded")
        runs = self.layout.runs
        evaluations.add_metric([], sum(1 for _ in runs.glob("*/eval/*.json")) if runs.is_dir() else 0)
        yield evaluations
