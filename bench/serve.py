"""Serving benchmark: latency and throughput through the gateway's in-process
backend at concurrency 1, 8 and 32, next to calling the same SavedModel
directly (same run, same images).

The gateway runs as its own process (``incept gateway``, uvicorn) on
127.0.0.1; the load comes from an asyncio httpx client here. Baselines: the
SavedModel's signature called directly with one image (latency) and with
batches of 1..32 (the model's best batched throughput).

Goals: gateway overhead at p50 (gateway c=1 p50 minus direct p50) <= 3 ms;
throughput at concurrency 32 >= 0.9x the model's best batched throughput.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import bench_parser, goal, report

ROOT = Path(__file__).resolve().parent.parent


def make_images(count: int, size: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    from incept.data.synthetic import class_image

    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(class_image(i % 5, 5, (size, size), rng)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def export(models: Path, net: str, image_size: int) -> None:
    import keras

    from incept import nets
    from incept.export import export_model

    keras.utils.set_random_seed(0)
    model = nets.build(net, num_classes=5, image_size=image_size)
    export_model(model, ["a", "b", "c", "d", "e"], models / "bench", image_size=image_size)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def direct(models: Path, images: list[bytes], repeats: int) -> tuple[float, float, dict]:
    """p50 latency of one image, and the best images/s over batch sizes 1..32."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(models / "bench" / "1")).signatures["serving_default"]

    def call(batch):
        return {k: v.numpy() for k, v in fn(images=tf.constant(batch)).items()}

    for _ in range(3):
        call(images[:1])
        call(images[:32])
    lat = []
    for i in range(repeats):
        t = time.perf_counter()
        call(images[i % len(images):i % len(images) + 1])
        lat.append(time.perf_counter() - t)
    throughput = {}
    for bs in (1, 4, 8, 16, 32):
        batch = (images * (bs // len(images) + 1))[:bs]
        n = max(3, repeats * 2 // bs)
        t = time.perf_counter()
        for _ in range(n):
            call(batch)
        throughput[bs] = n * bs / (time.perf_counter() - t)
    return statistics.median(lat), max(throughput.values()), throughput


async def load(url: str, bodies: list[dict], concurrency: int, requests: int) -> tuple[list[float], float]:
    import httpx

    latencies: list[float] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def worker():
            for i in counter:
                t = time.perf_counter()
                r = await client.post("/v1/models/bench:predict", json=bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"gateway answered {r.status_code}: {r.text[:200]}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, requests / elapsed


def start_gateway(data_root: Path, redis_url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "INCEPT_DATA_ROOT": str(data_root), "INCEPT_REDIS_URL": redis_url,
           "INCEPT_PORT": str(port), "INCEPT_HOST": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "INCEPT_PREDICT_BACKEND": "inprocess"}
    return subprocess.Popen([sys.executable, "-m", "incept.cli", "gateway"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(url: str, body: dict, timeout_s: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"{url}/v1/models/bench:predict", json=body, timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the gateway did not become ready")


def main() -> int:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--net", default="tiny", help="registered net to export (default: tiny)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="model input size (default: 224 quick, 299 full)")
    args = parser.parse_args()
    image_size = args.image_size or (224 if args.quick else 299)
    repeats = 60 if args.quick else 300
    requests = {1: 60, 8: 160, 32: 320} if args.quick else {1: 300, 8: 800, 32: 1600}

    from incept.redis_server import RedisServer, free_port

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        models = root / "models"
        export(models, args.net, image_size)
        images = make_images(32, 256)
        print(f"net {args.net} at {image_size} px, 256x256 JPEG inputs")
        direct_p50, best_batched, table = direct(models, images, repeats)
        report("direct p50 (1 image)", direct_p50 * 1000, "ms")
        for bs, ips in table.items():
            report(f"direct batch {bs}", ips, "images/s")

        bodies = [{"instances": [{"b64": base64.b64encode(img).decode()}]} for img in images]
        with RedisServer(Path(tmp) / "redis", persistent=False) as redis_server:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_gateway(root, redis_server.url, port)
            try:
                wait_ready(url, bodies[0])
                asyncio.run(load(url, bodies, 8, 64))  # warm up every batch shape
                results = {}
                for c, n in requests.items():
                    lat, rps = asyncio.run(load(url, bodies, c, n))
                    results[c] = (percentile(lat, 0.5), percentile(lat, 0.99), rps)
                    report(f"gateway c={c} p50", results[c][0] * 1000, "ms")
                    report(f"gateway c={c} p99", results[c][1] * 1000, "ms")
                    report(f"gateway c={c} throughput", rps, "images/s")
            finally:
                proc.terminate()
                proc.wait(30)
    overhead_ms = (results[1][0] - direct_p50) * 1000
    ratio = results[32][2] / best_batched
    report("gateway overhead p50", overhead_ms, "ms")
    report("c=32 / best batched", ratio)
    goal("gateway_overhead_p50_ms", overhead_ms, "<=", 3)
    goal("c32_vs_best_batched", ratio, ">=", 0.9)
    return 0


if __name__ == "__main__":
    sys.exit(main())
