"""The SavedModel served from this process: the newest version under
``models/<name>/`` is loaded with ``tf.saved_model.load`` and replaced the way
TF Serving does it (poll, load the new version beside the old one, swap one
reference, so a request never sees a half-loaded model). Concurrent requests
are batched: the dispatcher takes everything queued (up to ``batch_max_size``
images) while the previous batch ran, and waits up to ``batch_max_delay_ms``
for more only when traffic is concurrent, so a lone request pays no delay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from incept.layout import Layout
from services.gateway.backends.base import (
    ModelStatus,
    PredictionBackend,
    PredictResult,
    VersionStatus,
    predictions_from_outputs,
)
from services.gateway.errors import BackendUnavailable, BadImage, ModelNotFound
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


def servable_versions(model_dir: Path) -> list[int]:
    """Complete versions on disk (export renames a finished folder into place)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.name.isdigit() and (p / "saved_model.pb").exists())


@dataclass
class LoadedModel:
    version: int
    signature: object  # the concrete function ``serving_default``
    holder: object  # keeps the loaded object (and its variables) alive


@dataclass
class _Request:
    images: list[bytes]
    future: asyncio.Future


@dataclass
class ModelSlot:
    name: str
    current: LoadedModel | None = None
    loading: int | None = None
    failed: dict[int, str] = field(default_factory=dict)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    dispatcher: asyncio.Task | None = None
    load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_batch_requests: int = 1


class InProcessBackend(PredictionBackend):
    name = "inprocess"

    def __init__(self, layout: Layout, *, poll_s: float = 2.0, batch_max_size: int = 32,
                 batch_max_delay_ms: float = 2.0, metrics: GatewayMetrics | None = None):
        self.layout = layout
        self.poll_s = poll_s
        self.batch_max_size = batch_max_size
        self.batch_max_delay_s = batch_max_delay_ms / 1000.0
        self.metrics = metrics
        self.slots: dict[str, ModelSlot] = {}
        # One thread runs the model (TF uses every core inside one call); loading a
        # new version happens on another so serving goes on meanwhile.
        self._run_pool = ThreadPoolExecutor(1, thread_name_prefix="incept-predict")
        self._load_pool = ThreadPoolExecutor(1, thread_name_prefix="incept-load")
        self._poller: asyncio.Task | None = None

    async def start(self) -> None:
        self._poller = asyncio.create_task(self._poll_forever())

    async def close(self) -> None:
        tasks = [self._poller] + [s.dispatcher for s in self.slots.values()]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._run_pool.shutdown(wait=False, cancel_futures=True)
        self._load_pool.shutdown(wait=False, cancel_futures=True)

    # -- loading -----------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        try:
            return self.layout.model(name)
        except ValueError:
            raise ModelNotFound(f"unknown model {name!r}") from None

    @staticmethod
    def _load(path: Path, version: int) -> LoadedModel:
        import tensorflow as tf

        obj = tf.saved_model.load(str(path))
        return LoadedModel(version=version, signature=obj.signatures["serving_default"], holder=obj)

    async def _refresh(self, slot: ModelSlot) -> None:
        """Load the newest servable version if it is newer than the one served."""
        async with slot.load_lock:
            versions = [v for v in servable_versions(self._model_dir(slot.name))
                        if v not in slot.failed]
            if not versions or (slot.current and slot.current.version >= versions[-1]):
                return
            newest = versions[-1]
            slot.loading = newest
            try:
                loop = asyncio.get_running_loop()
                loaded = await loop.run_in_executor(
                    self._load_pool, self._load, self._model_dir(slot.name) / str(newest), newest)
            except Exception as e:  # a broken export must not take serving down
                log.warning("could not load %s version %s: %s", slot.name, newest, e)
                slot.failed[newest] = f"{type(e).__name__}: {e}"[:500]
                return
            finally:
                slot.loading = None
            slot.current = loaded  # the atomic swap
            log.info("serving %s version %s", slot.name, newest)

    def _slot(self, name: str) -> ModelSlot:
        slot = self.slots.get(name)
        if slot is None:
            model_dir = self._model_dir(name)
            if not model_dir.is_dir():
                raise ModelNotFound(f"unknown model {name!r}")
            slot = self.slots[name] = ModelSlot(name)
            slot.dispatcher = asyncio.create_task(self._dispatch_forever(slot))
        return slot

    async def _poll_forever(self) -> None:
        while True:
            try:
                if self.layout.models.is_dir():
                    for d in sorted(self.layout.models.iterdir()):
                        if d.is_dir() and not d.name.startswith("."):
                            with contextlib.suppress(ModelNotFound):
                                await self._refresh(self._slot(d.name))
            except Exception:  # keep polling whatever one pass met
                log.exception("model poll failed")
            await asyncio.sleep(self.poll_s)

    async def _loaded(self, name: str) -> tuple[ModelSlot, LoadedModel]:
        slot = self._slot(name)
        if slot.current is None:
            await self._refresh(slot)
        if slot.current is None:
            why = "; ".join(f"version {v}: {e}" for v, e in slot.failed.items())
            raise BackendUnavailable(f"model {name!r} has no servable version yet"
                                     + (f" ({why})" if why else ""), retry_after_s=max(1, int(self.poll_s)))
        return slot, slot.current

    # -- serving -----------------------------------------------------------

    async def predict(self, model: str, images: list[bytes],
                      version: int | None = None) -> PredictResult:
        slot, loaded = await self._loaded(model)
        if version is not None and version != loaded.version:
            raise ModelNotFound(f"model {model!r} version {version} is not served "
                                f"(serving version {loaded.version})")
        future = asyncio.get_running_loop().create_future()
        await slot.queue.put(_Request(images, future))
        served_version, outputs, offset = await future
        preds = predictions_from_outputs(
            {k: v[offset:offset + len(images)] for k, v in outputs.items()}, len(images))
        return PredictResult(model=model, version=served_version, predictions=preds)

    async def _dispatch_forever(self, slot: ModelSlot) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await slot.queue.get()]
            size = len(batch[0].images)
            deadline = time.monotonic() + self.batch_max_delay_s
            while size < self.batch_max_size:
                if not slot.queue.empty():
                    item = slot.queue.get_nowait()
                elif slot.last_batch_requests > 1 and self.batch_max_delay_s > 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(slot.queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    break
                batch.append(item)
                size += len(item.images)
            slot.last_batch_requests = len(batch)
            loaded = slot.current  # captured once: a swap mid-batch cannot split it
            images = [img for req in batch for img in req.images]
            if self.metrics:
                self.metrics.batch_size.observe(len(images))
            try:
                outputs = await loop.run_in_executor(self._run_pool, _run, loaded, images)
            except Exception as e:
                if len(batch) > 1 and isinstance(_classify(e), BadImage):
                    # One request's image broke the batch: answer each request alone,
                    # so only that request gets the error.
                    for req in batch:
                        await self._run_alone(loaded, req)
                else:
                    self._fail(batch, _classify(e))
                continue
            offset = 0
            for req in batch:
                if not req.future.done():
                    req.future.set_result((loaded.version, outputs, offset))
                offset += len(req.images)

    async def _run_alone(self, loaded: LoadedModel, req: _Request) -> None:
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._run_pool, _run, loaded, req.images)
        except Exception as e:
            self._fail([req], _classify(e))
            return
        if not req.future.done():
            req.future.set_result((loaded.version, outputs, 0))

    def _fail(self, batch: list[_Request], err: Exception) -> None:
        if self.metrics:
            self.metrics.backend_errors.labels(backend=self.name, kind=type(err).__name__).inc()
        for req in batch:
            if not req.future.done():
                req.future.set_exception(err)

    async def model_status(self, model: str) -> ModelStatus:
        slot = self._slot(model)
        if slot.current is None and slot.loading is None:
            await self._refresh(slot)
        versions = []
        if slot.current is not None:
            versions.append(VersionStatus(slot.current.version, "AVAILABLE"))
        if slot.loading is not None:
            versions.append(VersionStatus(slot.loading, "LOADING"))
        versions += [VersionStatus(v, "END", err) for v, err in sorted(slot.failed.items())]
        return ModelStatus(model, sorted(versions, key=lambda v: -v.version))


def _run(loaded: LoadedModel, images: list[bytes]) -> dict:
    import tensorflow as tf

    out = loaded.signature(images=tf.constant(images, dtype=tf.string))
    return {k: v.numpy() for k, v in out.items()}


def _classify(e: Exception) -> Exception:
    import tensorflow as tf

    if isinstance(e, tf.errors.InvalidArgumentError):
        return BadImage("an image cannot be decoded by the model: "
                        f"{e.message.splitlines()[0][:200]}")
    return BackendUnavailable(f"the model failed: {type(e).__name__}")
