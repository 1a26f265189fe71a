"""The SavedModel served from this process: the newest version under
``models/<name>/`` is loaded with ``tf.saved_model.load`` and replaced the way
TF Serving does it (poll, load the new version beside the old one, swap one
reference, so a request never sees a half-loaded model). Concurrent requests
are batched: a model thread takes everything queued (up to ``batch_max_size``
images) while the previous batch ran, and waits for more only when traffic is
concurrent and only until the oldest request has waited ``batch_max_delay_ms``,
so a lone request pays no delay and a busy model no idle gap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from incept.errors import ApiError
from incept.layout import Layout, list_versions, pinned_version
from incept.serving.backend import ModelMetadata, ModelStatus, PredictionBackend, VersionStatus
from incept.serving.errors import BackendUnavailable, BadImage, ModelNotFound
from incept.serving.outputs import PredictResult
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    version: int
    signature: Callable[..., dict[str, Any]]  # the concrete function ``serving_default``
    holder: object  # keeps the loaded object (and its variables) alive
    path: Path
    signature_def: dict[str, Any] | None = None  # read from saved_model.pb when first asked


@dataclass
class _Request:
    images: list[bytes]
    future: asyncio.Future
    queued_at: float  # time.monotonic()


@dataclass
class ModelSlot:
    name: str
    current: LoadedModel | None = None
    loading: int | None = None
    failed: dict[int, str] = field(default_factory=dict)
    # Fed by the event loop, read by the slot's model thread (None: stop).
    queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    batcher: threading.Thread | None = None
    load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class InProcessBackend(PredictionBackend):
    name = "inprocess"

    def __init__(self, layout: Layout, *, poll_s: float = 1.0, batch_max_size: int = 32,
                 batch_max_delay_ms: float = 2.0, metrics: GatewayMetrics | None = None):
        self.layout = layout
        self.poll_s = poll_s
        self.batch_max_size = batch_max_size
        self.batch_max_delay_s = batch_max_delay_ms / 1000.0
        self.metrics = metrics
        self.slots: dict[str, ModelSlot] = {}
        # Each model has a thread that forms its batches and runs them (see
        # _batch_forever); one model call at a time across models (TF uses every
        # core inside one call). Loading a new version happens on another thread
        # so serving goes on meanwhile.
        self._run_lock = threading.Lock()
        self._load_pool = ThreadPoolExecutor(1, thread_name_prefix="incept-load")
        self._poller: asyncio.Task | None = None

    async def start(self) -> None:
        self._poller = asyncio.create_task(self._poll_forever())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
        for slot in self.slots.values():
            slot.queue.put(None)  # the thread ends after the batch it runs, if any
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
        return LoadedModel(version=version, signature=obj.signatures["serving_default"], holder=obj,
                           path=path)

    async def _refresh(self, slot: ModelSlot) -> None:
        """Load the version that should serve -- the pinned one (``serving.json``)
        while it exists, else the newest -- when another one is served."""
        async with slot.load_lock:
            model_dir = self._model_dir(slot.name)
            versions = [v for v in list_versions(model_dir) if v not in slot.failed]
            pinned = pinned_version(model_dir)
            if pinned in versions:
                versions = [pinned]
            if not versions or (slot.current and slot.current.version == versions[-1]):
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
            slot.batcher = threading.Thread(target=self._batch_forever, args=(slot,),
                                            name=f"incept-predict-{name}", daemon=True)
            slot.batcher.start()
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
        slot, _ = await self._served(model, version)
        future = asyncio.get_running_loop().create_future()
        slot.queue.put(_Request(images, future, time.monotonic()))
        served_version, outputs, offset = await future
        return PredictResult(model=model, version=served_version, outputs={
            k: v[offset:offset + len(images)] for k, v in outputs.items()})

    async def _served(self, model: str, version: int | None) -> tuple[ModelSlot, LoadedModel]:
        slot, loaded = await self._loaded(model)
        if version is not None and version != loaded.version:
            # As TF Serving's default policy: only the newest version is served.
            raise ModelNotFound(f"Servable not found for request: Specific({model}, {version})")
        return slot, loaded

    async def metadata(self, model: str, version: int | None = None) -> ModelMetadata:
        from incept.serving.tfserving_json import signature_def_map

        _, loaded = await self._served(model, version)
        if loaded.signature_def is None:
            loaded.signature_def = await asyncio.to_thread(signature_def_map, loaded.path)
        return ModelMetadata(model, loaded.version, loaded.signature_def)

    # -- the model thread ----------------------------------------------------
    # Batches are formed and run off the event loop: as a task on the loop, the
    # dispatcher only got to start the next batch after the loop had parsed every
    # request that arrived meanwhile, and the model sat idle for that long.

    def _next_batch(self, slot: ModelSlot, concurrent: bool) -> list[_Request] | None:
        first = slot.queue.get()
        if first is None:
            return None
        batch, size = [first], len(first.images)
        deadline = first.queued_at + self.batch_max_delay_s
        while size < self.batch_max_size:
            try:
                item = slot.queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if not concurrent or remaining <= 0:
                    break
                try:
                    item = slot.queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:
                slot.queue.put(None)  # stop after this batch
                break
            batch.append(item)
            size += len(item.images)
        return batch

    def _batch_forever(self, slot: ModelSlot) -> None:
        concurrent = False
        while (batch := self._next_batch(slot, concurrent)) is not None:
            concurrent = len(batch) > 1
            loaded = slot.current  # captured once: a swap mid-batch cannot split it
            assert loaded is not None  # requests are queued only once a version is loaded
            try:
                images = [img for req in batch for img in req.images]
                if self.metrics:
                    self.metrics.batch_size.observe(len(images))
                try:
                    self._answer(batch, loaded, self._call(loaded, images))
                except BadImage:
                    if len(batch) == 1:
                        raise
                    # One request's image broke the batch: run each request alone,
                    # so only that request gets the error.
                    for req in batch:
                        try:
                            self._answer([req], loaded, self._call(loaded, req.images))
                        except ApiError as e:
                            self._fail([req], e)
            except ApiError as e:
                self._fail(batch, e)
            except Exception:  # the thread must outlive anything one batch meets
                log.exception("a batch of model %s failed", slot.name)
                self._fail(batch, BackendUnavailable("the model failed"))

    def _call(self, loaded: LoadedModel, images: list[bytes]) -> dict:
        try:
            with self._run_lock:
                return _run(loaded, images)
        except Exception as e:
            raise _classify(e) from None

    @staticmethod
    def _answer(batch: list[_Request], loaded: LoadedModel, outputs: dict) -> None:
        answers, offset = [], 0
        for req in batch:
            answers.append((req.future, (loaded.version, outputs, offset)))
            offset += len(req.images)
        _settle(answers)

    def _fail(self, batch: list[_Request], err: ApiError) -> None:
        if self.metrics:
            self.metrics.backend_errors.labels(backend=self.name, kind=type(err).__name__).inc()
        _settle([(req.future, err) for req in batch])

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


def _settle(answers: Sequence[tuple[asyncio.Future, object]]) -> None:
    """Answer requests from the model thread with one wake-up of the event loop
    (every request of a backend comes from its app's loop); a request whose
    client went away meanwhile is skipped."""

    def resolve():
        for future, outcome in answers:
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
        answers[0][0].get_loop().call_soon_threadsafe(resolve)


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
