"""Load on the running local stack: a bounded number of concurrent prediction
requests through the gateway for a bounded time.

Prints throughput, p50/p99 latency, the error count and the gateway's peak
memory, next to a baseline measured in the same run on the same images: one
request at a time. Images: real JPEGs from ``../shared/data/flower_photos_sample``
when present (or ``--images DIR``), else generated ones.

The stack is the one ``incept up`` runs for ``--data-root`` (or ``--url``); with
``--quick`` and no stack running, the script starts its own on free ports with
a freshly exported tiny model and stops it afterwards.

GOAL lines: ``load_errors`` (== 0), ``load_vs_sequential`` (throughput at the
chosen concurrency / one request at a time, >= 1.0)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import bench_parser, goal, report

_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = _ROOT.parent / "shared" / "data" / "flower_photos_sample"


def load_images(folder: Path | None, limit: int) -> list[bytes]:
    folder = folder or (SAMPLE_DIR if SAMPLE_DIR.is_dir() else None)
    if folder is not None:
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        if files:
            step = max(1, len(files) // limit)
            return [p.read_bytes() for p in files[::step][:limit]]
    import numpy as np

    from incept.data.synthetic import class_image, encode

    rng = np.random.default_rng(0)
    return [encode(class_image(i % 5, 5, (320, 240), rng)) for i in range(limit)]


class PeakMemory:
    """Samples the resident memory of a process and its children."""

    def __init__(self, pid: int | None, interval_s: float = 0.1):
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(psutil.Error):
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(True))
                self.peak = max(self.peak, rss)

    def __enter__(self) -> PeakMemory:
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


async def drive(url: str, token: str | None, model: str, images: list[bytes], concurrency: int,
                duration_s: float) -> dict:
    """``concurrency`` clients, each sending one image per request back to back."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    deadline = time.perf_counter() + duration_s

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        i = worker
        while time.perf_counter() < deadline:
            body = images[i % len(images)]
            i += concurrency
            start = time.perf_counter()
            try:
                r = await http.post(f"/v1/classify/{model}",
                                    files=[("images", ("image.jpg", body, "image/jpeg"))])
                ok = r.status_code == 200 and r.json().get("predictions")
                if not ok:
                    errors.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(repr(e))
                continue
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60.0, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(w, http) for w in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies) + len(errors), "errors": errors, "wall_s": wall,
        "throughput": len(latencies) / wall if wall else 0.0,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies else float("nan"),
    }


def find_model(url: str, token: str | None, wanted: str | None) -> str:
    from incept.client import GatewayClient

    with GatewayClient(url, token) as client:
        models = client.models()
    if wanted:
        return wanted
    for m in models:
        if any(v.get("state") == "AVAILABLE" for v in m.get("versions", [])) or m.get("versions_on_disk"):
            return m["name"]
    raise SystemExit(f"no model is served at {url}: train one first (make up), or pass --model")


@contextlib.contextmanager
def own_stack():
    """A throwaway stack (free ports, temporary data root) serving a tiny model."""
    from incept.data.synthetic import default_class_names
    from incept.export import export_model
    from incept.nets import build
    from incept.stack import Stack

    with tempfile.TemporaryDirectory(prefix="incept-load-") as tmp:
        stack = Stack(Path(tmp) / "data", port=0, services=("gateway",), write_state=False)
        stack.start()
        try:
            names = default_class_names(5)
            export_model(build("tiny", num_classes=5), names, stack.layout.model("load"), image_size=32)
            yield stack, "load"
        finally:
            stack.stop()


def main() -> int:
    parser = bench_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="gateway URL (default: the local stack's)")
    parser.add_argument("--token")
    parser.add_argument("--data-root", type=Path, help="the local stack's data root")
    parser.add_argument("--model", help="model name (default: the first one served)")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds at full concurrency")
    parser.add_argument("--images", type=Path, help="a folder of JPEGs (default: the flower sample)")
    parser.add_argument("--gateway-pid", type=int, help="for the peak memory (default: the stack's)")
    args = parser.parse_args()
    concurrency = args.concurrency or (8 if args.quick else 32)
    duration = args.duration or (10.0 if args.quick else 60.0)

    from incept.client import GatewayClient, resolve_endpoint
    from incept.stack import read_state

    url, token = resolve_endpoint(args.url, args.token, args.data_root)
    state = read_state(args.data_root) if args.data_root else None
    gateway_pid = args.gateway_pid or ((state or {}).get("children", {}).get("gateway", {}).get("pid"))
    with contextlib.ExitStack() as stack_ctx:
        with GatewayClient(url, token) as probe:
            running = probe.healthy()
        model = args.model
        if not running:
            if not args.quick:
                raise SystemExit(f"no gateway at {url}: start the stack (make up) or use --quick")
            print(f"no gateway at {url}: starting a throwaway stack with a tiny model", flush=True)
            stack, model = stack_ctx.enter_context(own_stack())
            url, token = stack.url, stack.token
            gateway_pid = stack.children["gateway"].pid
        model = find_model(url, token, model)
        images = load_images(args.images, 64)
        print(f"gateway {url}, model {model}, {len(images)} images, concurrency {concurrency}, "
              f"{duration:.0f} s", flush=True)
        # Warm up (the model loads on first use), then the sequential baseline.
        asyncio.run(drive(url, token, model, images, 1, 2.0))
        base = asyncio.run(drive(url, token, model, images, 1, max(2.0, duration / 4)))
        with PeakMemory(gateway_pid) as mem:
            load = asyncio.run(drive(url, token, model, images, concurrency, duration))
    report("sequential throughput", base["throughput"], "req/s")
    report("sequential p50", base["p50_ms"], "ms")
    report(f"c{concurrency} throughput", load["throughput"], "req/s")
    report(f"c{concurrency} p50", load["p50_ms"], "ms")
    report(f"c{concurrency} p99", load["p99_ms"], "ms")
    report("requests", load["requests"])
    report("errors", len(load["errors"]) + len(base["errors"]))
    if mem.peak:
        report("gateway peak memory", mem.peak / 2**20, "MiB")
    for e in (base["errors"] + load["errors"])[:5]:
        print(f"  error: {e}")
    ratio = load["throughput"] / base["throughput"] if base["throughput"] else 0.0
    errors = len(load["errors"]) + len(base["errors"])
    goal("load_errors", errors, "==", 0)
    goal("load_vs_sequential", ratio, ">=", 1.0)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
