"""Benchmark the trainer, each number against a baseline measured in the same run.

    python bench/train.py [--quick] [--images N] [--data-dir DIR]

1. Head-only fine-tuning (the seed's recipe: heads only, 100 epochs) of
   ``inception_v4`` at 299 px on N images: wall time from spec to finished
   training (model build, feature pass, head training, checkpoints) divided by
   one forward pass of the backbone over the same images from scratch (build
   the model, decode, preprocess, forward at batch 32 including its tracing).
   Each runs in a fresh process, as a trainer does, so neither pays for or
   profits from the other's warm-up (oneDNN kernels, Keras, tf.data start-up);
   two rounds in alternating order, each side's fastest run kept.
   The ratio against the pass alone (model built and traced) is printed too:
   at small N the fixed costs (build, trace) dominate it.
   The seed's way, a forward pass per step for ~100 epochs, would be ~100.
2. Full fine-tuning throughput (images/s after the first step) divided by plain
   ``keras.Model.fit`` on the same model, loss (auxiliary head at 0.4, no
   weight decay), data pipeline and batch, in rounds that alternate the two;
   each side's best round counts. Each side runs with its defaults: the
   trainer XLA-compiles its step on a CPU, Keras's fit does not.
   (``--quick``: the tiny net, whose first Inception v4 training step alone
   takes minutes to trace on 2 cores.)
3. Peak resident memory of a trainer process, head-only and full path, at
   1100 and 2100 images, sizes at which its bounded buffers are full (each
   the least of two runs; ``--quick``: the tiny net, one run): the growth per
   1000 images (the worse of the paths). And the head-only path on a cache
   that is already full, at 2000 and 10000 images (``--quick``: 1000 and
   3000): Inception v4's features (random values, its dimensions) written into
   the cache for small generated images, so the trainer reads them
   memory-mapped and trains the heads without a feature pass.

Without --data-dir the images are generated (``incept.data.synthetic``);
``--data-dir`` takes a folder of class folders (e.g. flower_photos).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import bench_parser, goal, report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
HEAD_DATASET = "heads"  # the head-only measurement's images, shared by its child processes
HEADS = {"inception_v4": ["InceptionV4/Logits", "InceptionV4/AuxLogits/Aux_logits"],
         "tiny": ["TinyNet/Logits", "TinyNet/AuxLogits/Aux_logits"]}


def make_data(root: Path, name: str, images: int, source: Path | None, size: tuple[int, int]) -> Path:
    """A converted dataset of about ``images`` training images under root/datasets/name."""
    from incept.data.convert import convert
    from incept.data.synthetic import write_class_folders

    src = root / "src" / name
    if source is not None:
        classes = sorted(p for p in source.iterdir() if p.is_dir())
        per_class = max(1, images // max(1, len(classes)))
        for cls in classes:
            (src / cls.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(p for p in cls.iterdir() if p.is_file())[:per_class]:
                shutil.copy(f, src / cls.name / f.name)
    else:
        write_class_folders(src, num_classes=5, per_class=max(2, images // 5), size=size, seed=0)
    out = root / "datasets" / name
    convert(src, out, validation_percent=1, seed=0)
    return out


def write_spec(layout, job_id: str, spec: dict) -> None:
    from incept.fsutil import write_json_atomic
    from incept.spec import parse_spec

    run = layout.run(job_id)
    run.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.spec, json.loads(parse_spec(spec).model_dump_json()))


def seed_spec(dataset: str, model: str, size: int, **extra) -> dict:
    return {"dataset": dataset, "model_name": model, "image_size": size,
            "trainable_scopes": HEADS[model], "exclude_scopes": HEADS[model], "optimizer": "adam",
            "learning_rate": 0.001, "learning_rate_decay_factor": 0.76, "num_epochs_per_decay": 50,
            "moving_average_decay": 0.9999, "batch_size": 32, "epochs": 100, "augment": False,
            "checkpoint_every_seconds": None, "checkpoint_every_steps": None, **extra}


def forward_seconds(dataset_dir: Path, model_name: str, size: int) -> tuple[float, float]:
    """One forward pass over the images: (from scratch: build + trace + pass, the pass alone)."""
    import tensorflow as tf

    from incept.data.dataset import DatasetInfo, make_dataset
    from incept.nets import build

    start = time.perf_counter()
    info = DatasetInfo.load(dataset_dir)
    model = build(model_name, info.num_classes, image_size=size)
    run = tf.function(lambda x: model(x, training=False)["pre_logits"])
    ds = make_dataset(dataset_dir, "train", size, 32, training=False, drop_remainder=True)
    ds = ds.concatenate(make_dataset(dataset_dir, "train", size, 32, training=False).skip(
        info.count("train") // 32))
    for images, _ in ds:
        run(images).numpy()
    scratch = time.perf_counter() - start
    start = time.perf_counter()
    for images, _ in ds:
        run(images).numpy()
    return scratch, time.perf_counter() - start


def head_only_job_seconds(root: Path, size: int) -> tuple[float, float]:
    """Run the seed's head-only job on the dataset under root: (spec to done, feature pass)."""
    from incept.layout import Layout
    from incept.training.trainer import train

    layout = Layout(root).ensure()
    write_spec(layout, "heads", seed_spec(HEAD_DATASET, "inception_v4", size))
    start = time.perf_counter()
    result = train("heads", layout, handle_signals=False, show_bar=False, progress_interval_s=60)
    return time.perf_counter() - start, result.feature_seconds


def head_only(root: Path, images: int, source: Path | None, size: int, rounds: int) -> None:
    """Each measurement in a fresh process (a trainer is one), none paying for
    another's warm-up; rounds alternate the order (forward, job, job, forward...)
    and each side keeps its fastest run: this VM's speed drifts by up to ~1.7x
    for seconds at a time, and the least time is the one least disturbed."""
    make_data(root, HEAD_DATASET, images, source, (320, 240))
    scratch, warm, wall, feature = [], [], [], []
    for r in range(rounds):
        for what in (("forward", "head-timed") if r % 2 == 0 else ("head-timed", "forward")):
            out = run_child(root / f"{what}-{r}", what, "inception_v4", size, images, source,
                            dataset_root=root)
            (scratch if what == "forward" else wall).append(out[0])
            (warm if what == "forward" else feature).append(out[1])
    scratch_s, warm_s, wall_s = min(scratch), min(warm), min(wall)
    report("images", images)
    report("one forward pass (build+trace+pass)", scratch_s, "s")
    report("  the pass alone (traced model)", warm_s, "s")
    report("head-only job (spec to done)", wall_s, "s")
    report("  of which feature pass", min(feature), "s")
    report("ratio vs the pass alone", wall_s / warm_s)
    goal("head_only_vs_one_forward", wall_s / scratch_s, "<=", 1.3)


class KerasFit:
    """The baseline: plain ``keras.Model.fit`` on the same net, input pipeline and
    batch as the trainer's full path (same loss and auxiliary-head weight)."""

    def __init__(self, dataset_dir: Path, model_name: str, size: int, batch: int):
        import keras
        import tensorflow as tf

        from incept.data.dataset import DatasetInfo
        from incept.nets import build
        from incept.training import inputs

        info = DatasetInfo.load(dataset_dir)
        keras.utils.set_random_seed(0)
        net = build(model_name, info.num_classes, image_size=size)
        self.model = keras.Model(net.input, {"logits": net.output["logits"],
                                             "aux_logits": net.output["aux_logits"]})
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        self.model.compile(optimizer=keras.optimizers.Adam(0.01),
                           loss={"logits": loss, "aux_logits": loss},
                           loss_weights={"logits": 1.0, "aux_logits": 0.4})
        self.batch = batch
        self.data = inputs.train_images(dataset_dir, info, size, batch, augment=True, seed=0).map(
            lambda x, y: (x, {"logits": tf.one_hot(y, info.num_classes),
                              "aux_logits": tf.one_hot(y, info.num_classes)}))

    def images_per_sec(self, steps: int) -> float:
        """Throughput over ``steps`` steps, timed from the end of the first one."""
        import keras

        stamps: list[float] = []
        cb = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda b, logs: stamps.append(time.perf_counter()))
        self.model.fit(self.data, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[cb])
        return steps * self.batch / (stamps[-1] - stamps[0])


def full_vs_fit(root: Path, images: int, source: Path | None, model: str, size: int,
                steps: int, rounds: int) -> None:
    """Rounds alternate the baseline and the trainer; each side keeps its best
    throughput (the least disturbed by the VM's speed drifts, as in
    ``head_only``). Each round's ratio against the mean of the fits around it is
    printed too. Each trainer round is a new job (its first, tracing step is not
    counted, as the first step of each fit is not)."""
    from incept.layout import Layout
    from incept.training.trainer import train

    layout = Layout(root).ensure()
    make_data(root, "full", images, source, (96, 96))
    batch = 16
    fit = KerasFit(root / "datasets" / "full", model, size, batch)
    fits, ours, ratios = [fit.images_per_sec(steps)], [], []
    for r in range(rounds):
        job = f"full-{r}"
        # The same objective as the Keras model: no slim L2 weight decay (the
        # trainer's default adds it to the loss, which Keras's compile() has no
        # counterpart for without rebuilding the net with regularizers).
        write_spec(layout, job, {"dataset": "full", "model_name": model, "image_size": size,
                                 "batch_size": batch, "max_steps": steps + 1, "learning_rate": 0.01,
                                 "weight_decay": 0.0, "checkpoint_every_seconds": None,
                                 "checkpoint_every_steps": None})
        result = train(job, layout, path="full", handle_signals=False, show_bar=False,
                       progress_interval_s=3600)
        ours.append(result.steady_images_per_sec)
        fits.append(fit.images_per_sec(steps))
        ratios.append(ours[-1] / statistics.mean(fits[-2:]))
        print(f"round {r + 1}: keras.Model.fit {statistics.mean(fits[-2:]):.0f} images/s, "
              f"trainer {ours[-1]:.0f} images/s, ratio {ratios[-1]:.3f}", flush=True)
    report("model", 0 if model == "tiny" else 1, f"({model} at {size} px, batch {batch})")
    report("keras.Model.fit (best)", max(fits), "images/s")
    report("incept trainer, full path (best)", max(ours), "images/s")
    report("median of the round ratios", statistics.median(ratios))
    goal("full_vs_keras_fit", max(ours) / max(fits), ">=", 1.0)


def run_child(root: Path, what: str, model: str, size: int, images: int,
              source: Path | None, dataset_root: Path | None = None) -> list[float]:
    """Run one measurement in a fresh process; the numbers it prints last.
    ``dataset_root``: a folder whose converted datasets the child copies (its
    own layout, so nothing cached by another run is reused)."""
    out = subprocess.run([sys.executable, str(Path(__file__)), "--child", what, "--root", str(root),
                          "--model", model, "--size", str(size), "--images", str(images)]
                         + (["--data-dir", str(source)] if source else [])
                         + (["--datasets-from", str(dataset_root)] if dataset_root else []),
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"child failed: {out.stderr[-3000:]}")
    return [float(v) for v in out.stdout.strip().splitlines()[-1].split()]


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is not
    inherited from the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(args) -> None:
    from incept.layout import Layout
    from incept.training.trainer import train

    if args.datasets_from:
        shutil.copytree(args.datasets_from / "datasets", args.root / "datasets")
    if args.child == "forward":
        print(*forward_seconds(args.root / "datasets" / HEAD_DATASET, args.model, args.size))
        return
    if args.child == "head-timed":
        print(*head_only_job_seconds(args.root, args.size))
        return
    if args.child == "head-cached":
        shutil.copytree(args.datasets_from / "cache", args.root / "cache")
    layout = Layout(args.root).ensure()
    dataset, job = memory_dataset(args.images), f"mem-{args.child}-{args.images}"
    if args.child in ("head", "head-cached"):
        spec = seed_spec(dataset, args.model, args.size, epochs=None, max_steps=20)
    else:
        spec = {"dataset": dataset, "model_name": args.model, "image_size": args.size,
                "batch_size": 8, "max_steps": 20, "learning_rate": 0.01,
                "checkpoint_every_seconds": None}
    write_spec(layout, job, spec)
    train(job, layout, handle_signals=False, show_bar=False, progress_interval_s=3600)
    print(peak_rss_mb())


def fill_cache(root: Path, dataset: str, size: int) -> None:
    """Inception v4's features for every image of the dataset, as the trainer
    would have cached them (random values, the real dimensions and dtype)."""
    import numpy as np

    from incept.layout import Layout
    from incept.spec import parse_spec
    from incept.training import features

    layout = Layout(root)
    spec = parse_spec(seed_spec(dataset, "inception_v4", size, epochs=None, max_steps=20))
    key = features.backbone_key("inception_v4", size, None, spec.seed)
    rng = np.random.default_rng(0)
    for split, views in (("train", features.views_of(spec)), ("validation", [0])):
        fps = features.read_index(layout.dataset(dataset), split).fingerprints
        for view in views:
            features.save_entry(features.entry_path(layout.feature_cache, key,
                                                    features.images_key(fps), view),
                                {"pre_logits": rng.random((len(fps), 1536), np.float32).astype(np.float16),
                                 "aux_pre_logits": rng.random((len(fps), 768), np.float32).astype(np.float16)})


def cached_memory(root: Path, small: int, large: int) -> float:
    """Growth of a head-only trainer's peak RSS per 1000 images when every
    feature comes from the (memory-mapped) cache."""
    from incept.data.dataset import DatasetInfo

    counts, peaks = {}, {}
    for images in (small, large):
        name = memory_dataset(images)
        counts[images] = DatasetInfo.load(make_data(root, name, images, None, (32, 32))).count("train")
        fill_cache(root, name, 299)
        peaks[images] = run_child(root / f"cached-{images}", "head-cached", "inception_v4", 299,
                                  images, None, dataset_root=root)[0]
        report(f"peak RSS head-only, cached {counts[images]} images", peaks[images], "MB")
    per_1k = (peaks[large] - peaks[small]) / (counts[large] - counts[small]) * 1000.0
    report("  growth per 1k images (cached)", per_1k, "MB")
    return per_1k


def memory_dataset(images: int) -> str:
    return f"mem-{images}"


def memory(root: Path, model: str, size: int, small: int, large: int, source: Path | None,
           repeats: int) -> float:
    """Peak RSS of trainer processes (the datasets converted beforehand, outside
    them) at two sizes, both beyond the sizes at which the trainer's bounded
    buffers are full -- the full path's shuffle buffer (1024 examples) and the
    feature pass's batch (even batches of at most 32: 25 at 100 images, 32 from
    962 on) -- so what differs between them is what does grow with the images.
    Each size is measured ``repeats`` times, the least peak kept: a trainer's
    peak RSS varies by tens of MB from run to run (allocator, the order in
    which parallel branches run), which a single pair would report as growth."""
    from incept.data.dataset import DatasetInfo

    counts = {}  # training images per requested size (a --data-dir folder may hold fewer)
    for images in (small, large):
        out = make_data(root, memory_dataset(images), images, source, (160, 120))
        counts[images] = DatasetInfo.load(out).count("train")
    if counts[large] <= counts[small]:
        raise SystemExit(f"memory: {counts[large]} images are not more than {counts[small]}")
    growth = 0.0
    for path in ("head", "full"):
        peaks = {images: min(run_child(root / f"{path}-{images}-{i}", path, model, size, images,
                                       source, dataset_root=root)[0] for i in range(repeats))
                 for images in (small, large)}
        per_1k = (peaks[large] - peaks[small]) / (counts[large] - counts[small]) * 1000.0
        report(f"peak RSS {path} {counts[small]} images", peaks[small], "MB")
        report(f"peak RSS {path} {counts[large]} images", peaks[large], "MB")
        report(f"  growth per 1k images ({path})", per_1k, "MB")
        growth = max(growth, per_1k)
    return growth


def main() -> int:
    parser = bench_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None,
                        help="images for the head-only measurement (default 400, --quick 80)")
    parser.add_argument("--data-dir", type=Path, default=None, help="class folders of real photos")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    # Internal: one measured trainer process.
    parser.add_argument("--child", choices=["head", "head-cached", "full", "forward", "head-timed"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--datasets-from", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="inception_v4", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=299, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    work = Path(tempfile.mkdtemp(prefix="incept-bench-train-"))
    try:
        images = args.images or (80 if args.quick else 400)
        print("== head-only fine-tuning vs one forward pass", flush=True)
        head_only(work / "heads", images, args.data_dir, 299, rounds=2)
        print("== full fine-tuning vs keras.Model.fit", flush=True)
        if args.quick:
            full_vs_fit(work / "full", 120, args.data_dir, "tiny", 64, steps=100, rounds=5)
        else:
            full_vs_fit(work / "full", 200, args.data_dir, "inception_v4", 149, steps=20, rounds=3)
        print("== peak memory vs number of images", flush=True)
        if args.quick:
            growth = memory(work / "mem", "tiny", 64, 1100, 2100, args.data_dir, repeats=1)
            growth = max(growth, cached_memory(work / "cached", 1000, 3000))
        else:
            growth = memory(work / "mem", "inception_v4", 299, 1100, 2100, args.data_dir, repeats=2)
            growth = max(growth, cached_memory(work / "cached", 2000, 10000))
        goal("memory_growth_per_1k_images_mb", growth, "<=", 50)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
