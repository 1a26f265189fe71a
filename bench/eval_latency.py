"""Evaluator latency and throughput.

    python bench/eval_latency.py [--quick] [--checkpoints N] [--images N]

eval_reaction_s: a real `incept evaluator` worker process and a real Redis;
for each new checkpoint, the time from the end of its save (then the
trainer's eval request) until its metrics are in the job's Redis hash, minus
the evaluation's own compute time (restore + forward + metrics, reported by the
evaluator in the result). The seed's eval loop polled every 60 s. Tiny net;
blessing is off (bless_threshold 1.0) so no export is timed.

eval_vs_forward: images per second of the evaluation pass (TFRecord read,
decode, eval preprocessing, forward, metrics -- each image once) against one
plain forward pass of the same Inception v4 over the same images already
decoded in memory, in this process; best of 3 alternating runs each. The goal
uses this process's CPU time (the cores are shared, so wall time swings with
the neighbours' load); the wall-time ratio is printed beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import bench_parser, goal, report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent


def make_data(layout, work: Path, name: str, per_class: int, size=(64, 48)) -> Path:
    from incept.data.convert import convert
    from incept.data.synthetic import write_class_folders

    src = work / f"src-{name}"
    write_class_folders(src, num_classes=5, per_class=per_class, size=size)
    out = layout.dataset(name)
    convert(src, out, validation_percent=20, seed=0)
    return out


def reaction(layout, redis_url: str, work: Path, checkpoints: int) -> list[float]:
    import tensorflow as tf

    from incept.checkpoints import build_model, class_names_path, make_checkpoint, make_manager
    from incept.data.dataset import DatasetInfo
    from incept.jobstate import JobState
    from incept.queues import connect, enqueue_eval
    from incept.spec import parse_spec

    make_data(layout, work, "lat", per_class=20)
    run = layout.run("latency")
    run.root.mkdir(parents=True)
    spec = parse_spec({"dataset": "lat", "model_name": "tiny", "image_size": 32, "max_steps": 100,
                       "bless_threshold": 1.0})
    run.spec.write_text(spec.model_dump_json())
    names = DatasetInfo.load(layout.dataset("lat")).class_names
    class_names_path(run).write_text(json.dumps(names))
    model = build_model(spec, len(names))
    manager = make_manager(make_checkpoint(model), run.checkpoints, keep=checkpoints + 1)

    env = {**os.environ, "INCEPT_DATA_ROOT": str(layout.root), "INCEPT_REDIS_URL": redis_url}
    log = open(work / "evaluator.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "incept.cli", "evaluator", "--no-reconciler"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    conn = connect(redis_url)
    state = JobState(conn)
    try:
        from rq import Worker

        from incept.queues import rq_queue

        deadline = time.monotonic() + 120
        while not Worker.all(queue=rq_queue(conn, "eval")):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"evaluator did not start; see {work / 'evaluator.log'}")
            time.sleep(0.1)
        out = []
        for i in range(checkpoints):
            step = i + 1
            model.get_layer("Logits.Logits").kernel.assign_add(
                tf.random.normal(model.get_layer("Logits.Logits").kernel.shape, stddev=0.01))
            manager.save(checkpoint_number=step)
            saved = time.perf_counter()
            enqueue_eval(conn, "latency", step)
            while ((state.get("latency") or {}).get("latest_eval") or {}).get("step") != step:
                if time.perf_counter() - saved > 120:
                    raise RuntimeError(f"no metrics for step {step}; see {work / 'evaluator.log'}")
                time.sleep(0.005)
            in_redis = time.perf_counter() - saved
            compute = json.loads(run.eval_result(step).read_text())["compute_s"]
            out.append(in_redis - compute)
            print(f"checkpoint {step}: metrics in Redis after {in_redis:.3f} s, compute "
                  f"{compute:.3f} s, reaction {in_redis - compute:.3f} s", flush=True)
        return out
    finally:
        worker.terminate()
        worker.wait(30)
        conn.close()


def throughput(layout, work: Path, images: int, image_size: int,
               repeats: int) -> dict[str, float]:
    import tensorflow as tf

    from incept import nets
    from incept.data.dataset import read_examples
    from incept.evaluation.metrics import classification_metrics, forward_fn, run_split
    from incept.preprocessing import decode_and_preprocess_for_eval

    dataset = make_data(layout, work, "thr", per_class=images, size=(320, 240))
    model = nets.build("inception_v4", 5, image_size=image_size)
    forward = forward_fn(model, image_size)
    batches = []
    batch = []
    for ex in read_examples(dataset, "validation"):
        batch.append(decode_and_preprocess_for_eval(ex["image"], image_size))
        if len(batch) == 32:
            batches.append(tf.stack(batch))
            batch = []
    if batch:
        batches.append(tf.stack(batch))
    count = sum(int(b.shape[0]) for b in batches)
    forward(batches[0])  # trace once; both measurements below run warm

    def forward_pass() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for b in batches:
            forward(b)[0].numpy()
        return time.perf_counter() - wall, time.process_time() - cpu

    def evaluation_pass() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        outputs = run_split(model, dataset, "validation", image_size=image_size, forward=forward)
        classification_metrics(outputs.logits, outputs.labels, [str(i) for i in range(5)])
        assert len(outputs) == count
        return time.perf_counter() - wall, time.process_time() - cpu

    # Alternate and keep the best of each: the cores are shared with other work,
    # so single runs are noisy.
    forward_s = [float("inf"), float("inf")]
    eval_s = [float("inf"), float("inf")]
    for _ in range(repeats):
        forward_s = [min(a, b) for a, b in zip(forward_s, forward_pass(), strict=True)]
        eval_s = [min(a, b) for a, b in zip(eval_s, evaluation_pass(), strict=True)]
    return {"eval_wall": count / eval_s[0], "forward_wall": count / forward_s[0],
            "eval_cpu": count / eval_s[1], "forward_cpu": count / forward_s[1]}


def main() -> int:
    parser = bench_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=None)
    parser.add_argument("--images", type=int, default=None,
                        help="images per class to generate for the throughput part (20 %% are evaluated)")
    parser.add_argument("--image-size", type=int, default=299)
    args = parser.parse_args()
    from incept.layout import Layout
    from incept.redis_server import RedisServer

    checkpoints = args.checkpoints or (5 if args.quick else 20)
    per_class = args.images or (40 if args.quick else 160)
    work = Path(tempfile.mkdtemp(prefix="incept-eval-latency-"))
    server = RedisServer(work / "redis", persistent=False).start()
    try:
        layout = Layout(work / "data").ensure()
        reactions = reaction(layout, server.url, work, checkpoints)
        rates = throughput(layout, work, per_class, args.image_size, repeats=3)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report("reaction median", statistics.median(reactions), "s")
    report("reaction max", max(reactions), "s")
    report("baseline: seed's poll interval", 60.0, "s")
    report("eval images/s (wall)", rates["eval_wall"])
    report("forward images/s (wall, baseline)", rates["forward_wall"])
    report("eval vs forward (wall)", rates["eval_wall"] / rates["forward_wall"])
    report("eval images/cpu-s", rates["eval_cpu"])
    report("forward images/cpu-s (baseline)", rates["forward_cpu"])
    goal("eval_reaction_s", max(reactions), "<=", 1)
    # Per CPU-second of this process: on shared cores wall time mostly measures
    # the neighbours; CPU time counts the decoding threads' work too.
    goal("eval_vs_forward", rates["eval_cpu"] / rates["forward_cpu"], ">=", 0.9)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
