"""Serving benchmark: latency and throughput through the gateway's in-process
backend at concurrency 1, 8 and 32, next to calling the same SavedModel
directly (same run, same images).

The gateway runs as its own process (``incept gateway``, uvicorn) on
127.0.0.1; the load comes from a minimal asyncio HTTP/1.1 client here.
Baselines: the SavedModel's signature called directly with one image (latency)
and with batches of 1..32 (the model's best batched throughput).

The model is the one the platform serves, ``inception_v4`` at 299 px;
``--quick`` exports the tiny net instead, whose ~1.5 ms of CPU per image is of
the order of the gateway's own per-request CPU (HTTP, JSON, base64), which on
a small machine competes with the model for the same cores.

Goals: gateway overhead at p50 (gateway c=1 p50 minus direct p50) <= 3 ms;
throughput at concurrency 32 >= 0.9x the model's best batched throughput;
the Open Inference Protocol's infer (binary extension, as stock clients send
it) at c=1 p50 <= 1.1x TF Serving's :predict on the same model and images."""

from __future__ import annotations

import asyncio
import base64
import io
import json
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


class Direct:
    """The same SavedModel called directly in this process: the baseline."""

    def __init__(self, models: Path, images: list[bytes]):
        import tensorflow as tf

        self.tf = tf
        self.fn = tf.saved_model.load(str(models / "bench" / "1")).signatures["serving_default"]
        self.images = images
        for _ in range(3):
            self.call(images[:1])
            self.call(images[:32])

    def call(self, batch: list[bytes]) -> dict:
        return {k: v.numpy() for k, v in self.fn(images=self.tf.constant(batch)).items()}

    def latency_p50(self, n: int) -> float:
        lat = []
        for i in range(n):
            t = time.perf_counter()
            self.call(self.images[i % len(self.images):i % len(self.images) + 1])
            lat.append(time.perf_counter() - t)
        return statistics.median(lat)

    def throughput(self, batch_size: int, images: int) -> float:
        batch = (self.images * (batch_size // len(self.images) + 1))[:batch_size]
        n = max(2, images // batch_size)
        t = time.perf_counter()
        for _ in range(n):
            self.call(batch)
        return n * batch_size / (time.perf_counter() - t)


class _Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: the load
    generator shares the 2 cores with the gateway, so it must cost little."""

    def __init__(self, port: int):
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def http_requests(bodies: list[bytes], path: bytes = b"/v1/models/bench:predict",
                  headers: list[bytes] | None = None) -> list[bytes]:
    return [(b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             + b"".join(h + b"\r\n" for h in (headers[i] if headers else [b"Content-Type: application/json"]))
             + b"Content-Length: " + str(len(b)).encode() + b"\r\n\r\n" + b)
            for i, b in enumerate(bodies)]


def v2_requests(images: list[bytes]) -> list[bytes]:
    """Open Inference Protocol requests as stock clients send them: the image
    through the binary tensor data extension, every output asked in binary."""
    bodies, headers = [], []
    for img in images:
        header = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                         "parameters": {"binary_data_size": len(img) + 4}}],
                             "parameters": {"binary_data_output": True}}).encode()
        bodies.append(header + len(img).to_bytes(4, "little") + img)
        headers.append([b"Content-Type: application/octet-stream",
                        b"Inference-Header-Content-Length: " + str(len(header)).encode()])
    return http_requests(bodies, b"/v2/models/bench/infer", headers)


async def load(port: int, requests_raw: list[bytes], concurrency: int,
               requests: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    counter = iter(range(requests))
    connections = [_Connection(port) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in connections))

    async def worker(conn: _Connection):
        for i in counter:
            t = time.perf_counter()
            status, body = await conn.post(requests_raw[i % len(requests_raw)])
            latencies.append(time.perf_counter() - t)
            if status != 200:
                raise RuntimeError(f"gateway answered {status}: {body[:200]!r}")

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - start
    for c in connections:
        c.close()
    return latencies, requests / elapsed


def start_gateway(data_root: Path, redis_url: str, port: int, batch_max_size: int) -> subprocess.Popen:
    env = {**os.environ, "INCEPT_DATA_ROOT": str(data_root), "INCEPT_REDIS_URL": redis_url,
           "INCEPT_BATCH_MAX_SIZE": str(batch_max_size),
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
    parser.add_argument("--net", default=None,
                        help="registered net to export (default: inception_v4, the model the "
                             "platform serves; --quick: tiny)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="model input size (default: 299, Inception v4's)")
    args = parser.parse_args()
    image_size = args.image_size or 299
    args.net = args.net or ("tiny" if args.quick else "inception_v4")
    rounds, seconds = (5, 0.6) if args.quick else (5, 4.0)

    from incept.redis_server import RedisServer, free_port

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        models = root / "models"
        export(models, args.net, image_size)
        images = make_images(32, 256)
        print(f"net {args.net} at {image_size} px, 256x256 JPEG inputs, {rounds} rounds")
        direct = Direct(models, images)
        # Each measurement lasts about ``seconds`` whatever the model's speed.
        n_latency = max(20, int(seconds / direct.latency_p50(5)))
        n_throughput = max(64, int(seconds * direct.throughput(32, 64)) // 32 * 32)
        bodies = [{"instances": [{"b64": base64.b64encode(img).decode()}]} for img in images]
        raw = http_requests([json.dumps(b).encode() for b in bodies])
        raw_v2 = v2_requests(images)
        # The model's best batch size, chosen once; the gateway is configured with it
        # (INCEPT_BATCH_MAX_SIZE), as an operator tunes it for the model and hardware.
        table = {bs: direct.throughput(bs, n_throughput) for bs in (1, 4, 8, 16, 32)}
        best_bs = max(table, key=table.get)
        print("direct " + ", ".join(f"batch {bs} {v:.0f}/s" for bs, v in table.items())
              + f": best batch size {best_bs}")
        with RedisServer(Path(tmp) / "redis", persistent=False) as redis_server:
            port = free_port()
            proc = start_gateway(root, redis_server.url, port, batch_max_size=best_bs)
            try:
                wait_ready(f"http://127.0.0.1:{port}", bodies[0])
                asyncio.run(load(port, raw, 8, 64))  # warm up every batch shape
                # The machine is shared: direct and gateway runs alternate, round
                # after round, and each goal uses the median of per-round results.
                asyncio.run(load(port, raw_v2, 1, 16))
                overheads, ratios, v2_ratios = [], [], []
                for r in range(rounds):
                    # Each gateway run sits between two direct runs; the baseline is their mean.
                    d_before = direct.latency_p50(n_latency)
                    lat, _ = asyncio.run(load(port, raw, 1, n_latency))
                    d_after = direct.latency_p50(n_latency)
                    d_p50, g_p50 = (d_before + d_after) / 2, percentile(lat, 0.5)
                    lat_v2, _ = asyncio.run(load(port, raw_v2, 1, n_latency))
                    lat_again, _ = asyncio.run(load(port, raw, 1, n_latency))
                    # v2 between two :predict runs; its baseline is their mean.
                    v2_ratios.append(percentile(lat_v2, 0.5)
                                     / ((g_p50 + percentile(lat_again, 0.5)) / 2))
                    t_before = direct.throughput(best_bs, n_throughput)
                    lat32, rps32 = asyncio.run(load(port, raw, 32, n_throughput))
                    t_after = direct.throughput(best_bs, n_throughput)
                    best = (t_before + t_after) / 2
                    overheads.append((g_p50 - d_p50) * 1000)
                    ratios.append(rps32 / best)
                    print(f"round {r + 1}: direct p50 {d_p50 * 1000:.2f} ms, gateway c=1 p50 "
                          f"{g_p50 * 1000:.2f} ms (p99 {percentile(lat, 0.99) * 1000:.2f}); direct "
                          f"batch {best_bs} {best:.0f}/s, gateway c=32 {rps32:.0f}/s "
                          f"(p50 {percentile(lat32, 0.5) * 1000:.1f} ms, "
                          f"p99 {percentile(lat32, 0.99) * 1000:.1f} ms); v2 infer c=1 p50 "
                          f"{percentile(lat_v2, 0.5) * 1000:.2f} ms", flush=True)
                lat8, rps8 = asyncio.run(load(port, raw, 8, n_throughput))
                report("gateway c=8 p50", percentile(lat8, 0.5) * 1000, "ms")
                report("gateway c=8 p99", percentile(lat8, 0.99) * 1000, "ms")
                report("gateway c=8 throughput", rps8, "images/s")
            finally:
                proc.terminate()
                proc.wait(30)
    overhead_ms = statistics.median(overheads)
    ratio = statistics.median(ratios)
    report("gateway overhead p50", overhead_ms, "ms")
    report("c=32 / best batched", ratio)
    goal("gateway_overhead_p50_ms", overhead_ms, "<=", 3)
    goal("c32_vs_best_batched", ratio, ">=", 0.9)
    goal("v2_overhead_vs_predict", statistics.median(v2_ratios), "<=", 1.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
