"""Open-set benchmark: does the model know what it does not know?

    python bench/open_set.py [--quick] [--data-dir DIR] [--steps N] [--size PX]

Held-out-class protocol: for each held-out class, train the tiny net on the
other classes (the data's train split), then score the known classes'
validation images (in-distribution) against every image of the held-out class
plus scikit-image's non-flower sample photos (unknown). Reported per score --
max-softmax (the baseline), energy, Mahalanobis on pre-logits -- as AUROC and
the false-positive rate at 95 % true-positive rate (the threshold the exporter
calibrates). Data: ``shared/data/flower_photos_sample`` beside the repository
when present, else generated class folders. --quick holds out one class.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from _common import bench_parser, goal, report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "flower_photos_sample"
NON_FLOWERS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "horse", "brick", "grass",
               "gravel", "moon", "page", "text", "clock", "coins", "hubble_deep_field",
               "immunohistochemistry", "logo", "colorwheel")


def non_flower_images() -> list[bytes]:
    """JPEG bytes of scikit-image's bundled sample photos (none of them a flower)."""
    import skimage.data
    from PIL import Image

    out = []
    for name in NON_FLOWERS:
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # a sample that needs a download: skip it
            continue
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        image = image[..., :3].astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def class_files(src: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.is_file())
            for d in sorted(src.iterdir()) if d.is_dir()}


def train_tiny(dataset_dir: Path, num_classes: int, size: int, steps: int):
    import tensorflow as tf

    from incept import nets
    from incept.data.dataset import make_dataset

    tf.keras.utils.set_random_seed(0)
    model = nets.build("tiny", num_classes, image_size=size)
    # slim's batch-norm momentum (0.9997) needs thousands of steps before the
    # moving statistics mean anything; this short run uses a faster average.
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = 0.9
    optimizer = tf.keras.optimizers.Adam(0.005)
    data = iter(make_dataset(dataset_dir, "train", size, batch_size=32, training=True, seed=0))

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)["logits"]
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    for _ in range(steps):
        step(*next(data))
    return model


def outputs_for(model, images: list[bytes], size: int) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    from incept.preprocessing import decode_and_preprocess_batch_for_eval

    logits, feats = [], []
    for i in range(0, len(images), 32):
        pixels = decode_and_preprocess_batch_for_eval(tf.constant(images[i:i + 32]), size)
        out = model(pixels, training=False)
        logits.append(out["logits"].numpy())
        feats.append(out["pre_logits"].numpy())
    return np.concatenate(logits), np.concatenate(feats)


def one_fold(src: Path, held_out: str, work: Path, size: int, steps: int,
             extra_unknown: list[bytes]) -> dict[str, tuple[float, float, float]]:
    from incept.data.convert import convert
    from incept.evaluation.metrics import classification_metrics, run_split
    from incept.evaluation.open_set import SCORES, OpenSetScore, compare

    files = class_files(src)
    known_src = work / f"known-{held_out}"
    for name, paths in files.items():
        if name != held_out:
            (known_src / name).mkdir(parents=True)
            for p in paths:
                (known_src / name / p.name).symlink_to(p)
    dataset = work / f"data-{held_out}"
    convert(known_src, dataset, validation_percent=20, seed=0)
    num_known = len(files) - 1
    model = train_tiny(dataset, num_known, size, steps)
    train = run_split(model, dataset, "train", image_size=size)
    val = run_split(model, dataset, "validation", image_size=size)
    accuracy = classification_metrics(val.logits, val.labels, [str(i) for i in range(num_known)])["accuracy"]
    unknown_bytes = [p.read_bytes() for p in files[held_out]] + extra_unknown
    unknown_logits, unknown_feats = outputs_for(model, unknown_bytes, size)
    print(f"held out {held_out!r}: known-class accuracy {accuracy:.3f} on {len(val)} images; "
          f"unknown: {len(files[held_out])} {held_out} + {len(extra_unknown)} non-flower", flush=True)
    out = {}
    for name in SCORES:
        layer = OpenSetScore(name, num_known, val.pre_logits.shape[1])
        layer.fit_features(train.pre_logits, train.labels)
        known = layer(val.logits, val.pre_logits).numpy()
        unknown = layer(unknown_logits, unknown_feats).numpy()
        r = compare(known, unknown, name)
        # The non-flower photos alone (the "cat called a dandelion" case).
        photos = compare(known, unknown[len(files[held_out]):], name)
        out[name] = (r.auroc, r.fpr_at_95tpr, photos.auroc)
    return out


def main() -> int:
    parser = bench_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=None, help="training steps per fold")
    parser.add_argument("--size", type=int, default=48, help="image size for the tiny net")
    args = parser.parse_args()
    from incept.evaluation.open_set import DEFAULT_SCORE, SCORES

    work = Path(tempfile.mkdtemp(prefix="incept-open-set-"))
    try:
        src = args.data_dir or (SAMPLE if SAMPLE.is_dir() else None)
        if src is None:
            from incept.data.synthetic import write_class_folders

            src = work / "generated"
            write_class_folders(src, num_classes=5, per_class=60, size=(96, 72))
        steps = args.steps or (300 if args.quick else 600)
        classes = sorted(class_files(src))
        held = classes[-1:] if args.quick else classes
        print(f"data {src}: classes {classes}; {steps} steps per fold at {args.size} px", flush=True)
        extra = non_flower_images()
        folds = [one_fold(src, h, work, args.size, steps, extra) for h in held]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mean = {n: tuple(float(np.mean([f[n][i] for f in folds])) for i in range(3)) for n in SCORES}
    print(f"\n{'score':<14}{'AUROC':>8}{'FPR@95TPR':>12}{'AUROC photos':>14}")
    for n in SCORES:
        print(f"{n:<14}{mean[n][0]:>8.3f}{mean[n][1]:>12.3f}{mean[n][2]:>14.3f}")
    best = max(SCORES, key=lambda n: mean[n][0])
    print(f"best AUROC this run: {best}; the exporter uses {DEFAULT_SCORE}")
    base = mean["max_softmax"]
    chosen = mean[DEFAULT_SCORE]
    report("auroc ratio vs max_softmax", chosen[0] / base[0] if base[0] else float("nan"))
    goal("open_set_auroc", chosen[0], ">=", round(base[0], 4))
    goal("open_set_fpr_at_95tpr", chosen[1], "<=", round(base[1], 4))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
