"""Choosing a ``tf.distribute`` strategy from the environment.

- ``TF_CONFIG`` set (any cluster spec with more than one task): MultiWorkerMirroredStrategy.
- A Kubernetes Indexed Job: ``JOB_COMPLETION_INDEX`` (set by Kubernetes) plus
  ``Settings.worker_hosts`` / ``INCEPT_WORKER_HOSTS`` (comma-separated stable host
  names of the pods behind a headless Service, e.g.
  ``incept-train-x-0.incept-train-x,incept-train-x-1.incept-train-x``) and
  ``Settings.worker_port`` / ``INCEPT_WORKER_PORT`` (default 12345): ``TF_CONFIG``
  is built from them, worker index = completion index, worker 0 is the chief.
- Otherwise MirroredStrategy over the local GPUs when there are several, else
  the default (no-op) strategy.

The strategy must exist before any other TensorFlow op runs in the process.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf


def tf_config_from_indexed_job(hosts: str, port: int, index: str | None) -> dict | None:
    """TF_CONFIG for worker ``index`` of the comma-separated ``hosts`` (None: not a cluster)."""
    names = [h.strip() for h in hosts.split(",") if h.strip()]
    if index is None or len(names) < 2:
        return None
    workers = [h if ":" in h else f"{h}:{port}" for h in names]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": int(index)}}


def cluster_size(tf_config: dict) -> int:
    return sum(len(v) for v in tf_config.get("cluster", {}).values())


def make_strategy() -> tf.distribute.Strategy:
    if "TF_CONFIG" not in os.environ:
        from incept.settings import get_settings

        settings = get_settings()
        built = tf_config_from_indexed_job(settings.worker_hosts, settings.worker_port,
                                           os.environ.get("JOB_COMPLETION_INDEX"))
        if built is not None:
            os.environ["TF_CONFIG"] = json.dumps(built)
    raw = os.environ.get("TF_CONFIG")
    if raw and cluster_size(json.loads(raw)) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is not None and cluster_size({"cluster": resolver.cluster_spec().as_dict()}) > 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                    "chief" not in resolver.cluster_spec().as_dict())


def worker_index(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id or 0) if resolver is not None and resolver.task_id is not None else 0


def num_workers(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    return max(1, len(resolver.cluster_spec().as_dict().get("worker", [])) +
               len(resolver.cluster_spec().as_dict().get("chief", [])))


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Wait until every worker gets here: a collective all-reduce of one number
    (a no-op for one worker)."""
    if is_multi_worker(strategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM,
                        strategy.run(lambda: tf.constant(1.0)), axis=None).numpy()


def has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))
