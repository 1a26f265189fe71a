"""Benchmark the trainer, each number against a baseline measured in the same run.

    python bench/train.py [--quick] [--images N] [--data-dir DIR]

1. Head-only fine-tuning (the seed's recipe: heads only, 100 epochs) of
   ``inception_v4`` at 299 px on N images: wall time from spec to finished
   training (model build, feature pass, head training, checkpoints) divided by
   one forward pass of the backbone over the same images from scratch (build
   the model, decode, preprocess, forward at batch 32 including its tracing).
   The ratio against the pass alone (model built and traced) is printed too:
   at small N the fixed costs (build, trace: ~15 s on 2 cores) dominate it.
   The seed's way, a forward pass per step for ~100 epochs, would be ~100.
2. Full fine-tuning throughput (images/s after the first step) divided by plain
   ``keras.Model.fit`` on the same model, data pipeline and batch.
   (``--quick``: the tiny net, whose first Inception v4 training step alone
   takes minutes to trace on 2 cores.)
3. Peak resident memory of a trainer process, head-only and full path, at two
   dataset sizes: the growth per 1000 images (the worse of the two paths).

Without --data-dir the images are generated (``incept.data.synthetic``);
``--data-dir`` takes a folder of class folders (e.g. flower_photos).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import bench_parser, goal, report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
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


def head_only(root: Path, images: int, source: Path | None, size: int) -> None:
    from incept.layout import Layout
    from incept.training.trainer import train

    layout = Layout(root).ensure()
    ds_dir = make_data(root, "heads", images, source, (320, 240))
    scratch, warm = forward_seconds(ds_dir, "inception_v4", size)
    write_spec(layout, "heads", seed_spec("heads", "inception_v4", size))
    start = time.perf_counter()
    result = train("heads", layout, handle_signals=False, show_bar=False, progress_interval_s=60)
    wall = time.perf_counter() - start
    report("images", images)
    report("one forward pass (build+trace+pass)", scratch, "s")
    report("  the pass alone (traced model)", warm, "s")
    report("head-only job (spec to done)", wall, "s")
    report("  of which feature pass", result.feature_seconds, "s")
    report("  steps (100 epochs)", result.step)
    report("ratio vs the pass alone", wall / warm)
    goal("head_only_vs_one_forward", wall / scratch, "<=", 1.3)


def keras_fit_images_per_sec(dataset_dir: Path, model_name: str, size: int, batch: int,
                             steps: int) -> float:
    import keras
    import tensorflow as tf

    from incept.data.dataset import DatasetInfo
    from incept.nets import build
    from incept.training import inputs

    info = DatasetInfo.load(dataset_dir)
    keras.utils.set_random_seed(0)
    net = build(model_name, info.num_classes, image_size=size)
    model = keras.Model(net.input, {"logits": net.output["logits"],
                                    "aux_logits": net.output["aux_logits"]})
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss={"logits": keras.losses.CategoricalCrossentropy(from_logits=True),
                        "aux_logits": keras.losses.CategoricalCrossentropy(from_logits=True)},
                  loss_weights={"logits": 1.0, "aux_logits": 0.4})
    ds = inputs.train_images(dataset_dir, info, size, batch, augment=True, seed=0).map(
        lambda x, y: (x, {"logits": tf.one_hot(y, info.num_classes),
                          "aux_logits": tf.one_hot(y, info.num_classes)}))
    stamps: list[float] = []
    cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: stamps.append(time.perf_counter()))
    model.fit(ds, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[cb])
    return steps * batch / (stamps[-1] - stamps[0])


def full_vs_fit(root: Path, images: int, source: Path | None, model: str, size: int,
                steps: int) -> None:
    from incept.layout import Layout
    from incept.training.trainer import train

    layout = Layout(root).ensure()
    ds_dir = make_data(root, "full", images, source, (96, 96))
    batch = 16
    fit = keras_fit_images_per_sec(ds_dir, model, size, batch, steps)
    write_spec(layout, "full", {"dataset": "full", "model_name": model, "image_size": size,
                                "batch_size": batch, "max_steps": steps + 1, "learning_rate": 0.01,
                                "checkpoint_every_seconds": None, "checkpoint_every_steps": None})
    result = train("full", layout, path="full", handle_signals=False, show_bar=False,
                   progress_interval_s=3600)
    report("model", 0 if model == "tiny" else 1, f"({model} at {size} px, batch {batch})")
    report("keras.Model.fit", fit, "images/s")
    report("incept trainer (full path)", result.steady_images_per_sec, "images/s")
    goal("full_vs_keras_fit", result.steady_images_per_sec / fit, ">=", 1.0)


def child_peak_rss(root: Path, path: str, model: str, size: int, images: int,
                   source: Path | None) -> float:
    """Peak RSS (MB) of a fresh trainer process on a dataset of ``images``."""
    out = subprocess.run([sys.executable, str(Path(__file__)), "--child", path, "--root", str(root),
                          "--model", model, "--size", str(size), "--images", str(images)]
                         + (["--data-dir", str(source)] if source else []),
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"child failed: {out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


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

    layout = Layout(args.root).ensure()
    name = f"mem-{args.child}-{args.images}"
    make_data(args.root, name, args.images, args.data_dir, (160, 120))
    if args.child == "head":
        spec = seed_spec(name, args.model, args.size, epochs=None, max_steps=20)
    else:
        spec = {"dataset": name, "model_name": args.model, "image_size": args.size,
                "batch_size": 8, "max_steps": 20, "learning_rate": 0.01,
                "checkpoint_every_seconds": None}
    write_spec(layout, name, spec)
    train(name, layout, handle_signals=False, show_bar=False, progress_interval_s=3600)
    print(peak_rss_mb())


def memory(root: Path, model: str, size: int, small: int, large: int, source: Path | None) -> None:
    growth = 0.0
    for path in ("head", "full"):
        a = child_peak_rss(root / f"{path}-a", path, model, size, small, source)
        b = child_peak_rss(root / f"{path}-b", path, model, size, large, source)
        per_1k = (b - a) / (large - small) * 1000.0
        report(f"peak RSS {path} {small} images", a, "MB")
        report(f"peak RSS {path} {large} images", b, "MB")
        report(f"  growth per 1k images ({path})", per_1k, "MB")
        growth = max(growth, per_1k)
    goal("memory_growth_per_1k_images_mb", growth, "<=", 50)


def main() -> int:
    parser = bench_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None,
                        help="images for the head-only measurement (default 400, --quick 80)")
    parser.add_argument("--data-dir", type=Path, default=None, help="class folders of real photos")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    # Internal: one measured trainer process.
    parser.add_argument("--child", choices=["head", "full"], help=argparse_hidden())
    parser.add_argument("--root", type=Path, help=argparse_hidden())
    parser.add_argument("--model", default="inception_v4", help=argparse_hidden())
    parser.add_argument("--size", type=int, default=299, help=argparse_hidden())
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    work = Path(tempfile.mkdtemp(prefix="incept-bench-train-"))
    try:
        images = args.images or (80 if args.quick else 400)
        print("== head-only fine-tuning vs one forward pass", flush=True)
        head_only(work / "heads", images, args.data_dir, 299)
        print("== full fine-tuning vs keras.Model.fit", flush=True)
        if args.quick:
            full_vs_fit(work / "full", 120, args.data_dir, "tiny", 64, steps=60)
        else:
            full_vs_fit(work / "full", 200, args.data_dir, "inception_v4", 149, steps=20)
        print("== peak memory vs number of images", flush=True)
        if args.quick:
            memory(work / "mem", "tiny", 64, 100, 700, args.data_dir)
        else:
            memory(work / "mem", "inception_v4", 299, 100, 1100, args.data_dir)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
