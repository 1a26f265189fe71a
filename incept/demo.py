"""The demo job ``incept up`` / ``make up`` runs on the fresh stack, over HTTP
exactly as a user would: upload a dataset, submit a job spec, follow its
progress, then show the evaluations, the exported version, one prediction and
the page's URL.

What it trains on, in order of preference (each choice is announced):
- data: ``--data DIR`` (class folders of photos), else the official
  flower_photos archive if it can be downloaded, else a generated 5-class set;
- weights: ``--checkpoint PREFIX``, else the official Inception v4 checkpoint if
  it can be downloaded — then the seed's recipe (head-only fine-tuning of
  Inception v4 at 299 px) — else random initialisation, where fine-tuning
  Inception v4 would take hours on a CPU, so the demo trains the tiny network
  from scratch at a small image size, which finishes in a few minutes.

The job id is kept under ``<data root>/stack/demo.json``, so a second
``make up`` follows (and resumes) the same job instead of starting another."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from incept.client import GatewayClient, GatewayError
from incept.errors import UserError
from incept.fsutil import write_json_atomic
from incept.stack import StackPaths

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}


@dataclass
class DemoData:
    name: str  # dataset name on the gateway
    source: Path  # class folders
    kind: str  # "folder" | "flowers" | "generated"


@dataclass
class DemoWeights:
    checkpoint: str | None  # None: random initialisation
    kind: str  # "given" | "official" | "random"


# ---------------------------------------------------------------------------
# Choosing data and weights


def _has_class_folders(path: Path) -> bool:
    return path.is_dir() and any(
        d.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir())
        for d in path.iterdir())


def _class_root(path: Path) -> Path:
    """The folder holding the class folders (archives often add one level)."""
    if _has_class_folders(path):
        return path
    subdirs = [d for d in path.iterdir() if d.is_dir()] if path.is_dir() else []
    if len(subdirs) == 1 and _has_class_folders(subdirs[0]):
        return subdirs[0]
    raise UserError(f"{path} holds no class folders of images (expected DIR/<class>/<image>.jpg)")


def _try_download(what: str, dest: Path, console: Console) -> Path | None:
    """Download the flowers archive or the Inception v4 checkpoint with
    ``incept.data.download``; None (and a note why) if that is not possible."""
    from incept.data.download import download_flowers, download_inception_v4

    fn = {"flowers": download_flowers, "checkpoint": download_inception_v4}[what]
    try:
        return Path(fn(dest))
    except Exception as e:  # offline, blocked, truncated: fall back, say why
        console.print(f"  could not download the {what}: {e}")
        return None


def choose_data(data: Path | None, root: Path, console: Console) -> DemoData:
    if data is not None:
        source = _class_root(Path(data).resolve())
        name = "photos-" + hashlib.sha1(str(source).encode()).hexdigest()[:8]
        console.print(f"data: your photos in {source}")
        return DemoData(name, source, "folder")
    downloads = root / "downloads"
    flowers = _try_download("flowers", downloads, console)
    if flowers is not None:
        console.print(f"data: the flower_photos set ({flowers})")
        return DemoData("flowers", _class_root(flowers), "flowers")
    from incept.data.synthetic import write_class_folders

    source = root / "demo" / "generated"
    if not _has_class_folders(source):
        write_class_folders(source, num_classes=5, per_class=40, size=(64, 64), seed=0)
    console.print("[yellow]data: no DATA= folder and no download possible — using a GENERATED "
                  f"5-class image set made offline ({source}); give DATA=DIR for real photos[/]")
    return DemoData("generated-flowers", source, "generated")


HEAD_ONLY_NOTE = ("  the seed's recipe: fine-tune the logits heads of Inception v4 at 299 px. The frozen "
                  "backbone's features are computed once per image (the long part: tens of minutes "
                  "for the flowers on a 2-core CPU), then the heads train in seconds.")


def choose_weights(checkpoint: str | None, root: Path, console: Console) -> DemoWeights:
    if checkpoint:
        prefix = Path(checkpoint).expanduser().resolve()
        if not (prefix.is_file() or Path(f"{prefix}.index").is_file()):
            raise UserError(f"CHECKPOINT={checkpoint}: no such checkpoint (expected a file, or a "
                            f"prefix with {prefix.name}.index beside it)")
        inside = _into_data_root(prefix, root)
        console.print(f"weights: the Inception v4 checkpoint {prefix}"
                      + (f" (linked into the data root as {inside})" if inside != prefix else ""))
        console.print(HEAD_ONLY_NOTE)
        return DemoWeights(str(inside), "given")
    found = _try_download("checkpoint", root / "pretrained", console)
    if found is not None:
        console.print(f"weights: the official Inception v4 checkpoint ({found})")
        console.print(HEAD_ONLY_NOTE)
        return DemoWeights(str(found), "official")
    console.print("[yellow]weights: no CHECKPOINT= and no download possible — RANDOM "
                  "INITIALISATION. Fine-tuning Inception v4 from scratch would take hours on a CPU, "
                  "so the demo trains the tiny test network from scratch at a small image size "
                  "(a few minutes). Give CHECKPOINT=PREFIX for the real fine-tuning.[/]")
    return DemoWeights(None, "random")


def _into_data_root(prefix: Path, root: Path) -> Path:
    """The services read base checkpoints only inside the data root: a checkpoint
    given from elsewhere is hard-linked (else copied) into pretrained/given/ once."""
    root = root.resolve()
    if root in prefix.parents:
        return prefix
    dest = root / "pretrained" / "given"
    dest.mkdir(parents=True, exist_ok=True)
    files = [p for p in prefix.parent.iterdir() if p.is_file() and (
        p.name == prefix.name or p.name.startswith(prefix.name + ".")
        and p.name[len(prefix.name):].startswith((".index", ".data-", ".meta")))]
    for src in files:
        dst = dest / src.name
        if dst.exists() and dst.stat().st_size == src.stat().st_size:
            continue
        partial = dst.with_name(dst.name + ".partial")
        partial.unlink(missing_ok=True)
        try:
            os.link(src, partial)
        except OSError:  # another file system
            shutil.copyfile(src, partial)
        os.replace(partial, dst)
    return dest / prefix.name


def demo_spec(data: DemoData, weights: DemoWeights) -> dict:
    """The job spec the demo submits."""
    if weights.checkpoint:
        # The seed's recipe: fine-tune the logits heads of Inception v4.
        heads = ["InceptionV4/Logits", "InceptionV4/AuxLogits/Aux_logits"]
        return {
            "dataset": data.name, "model_name": "inception_v4", "checkpoint": weights.checkpoint,
            "exclude_scopes": heads, "trainable_scopes": heads, "optimizer": "adam",
            "learning_rate": 0.001, "learning_rate_decay_factor": 0.76, "num_epochs_per_decay": 50,
            "moving_average_decay": 0.9999, "batch_size": 32, "epochs": 20,
            "checkpoint_every_steps": 500, "keep_checkpoints": 10, "served_model_name": data.name,
        }
    generated = data.kind == "generated"
    return {
        "dataset": data.name, "model_name": "tiny", "image_size": 32 if generated else 64,
        "optimizer": "adam", "learning_rate": 0.01, "opt_epsilon": 1e-3,
        "learning_rate_decay_factor": 0.9, "num_epochs_per_decay": 10,
        "batch_size": 32, "max_steps": 300 if generated else 1500,
        "checkpoint_every_steps": 50 if generated else 250, "keep_checkpoints": 10,
        "served_model_name": data.name,
    }


# ---------------------------------------------------------------------------
# Over HTTP


UPLOAD_LIMIT_BYTES = 1024**3  # below the gateway's default upload limit (2 GiB)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def convert_locally(data: DemoData, root: Path) -> None:
    import subprocess
    import sys

    from incept.layout import Layout

    out = Layout(root).dataset(data.name)
    result = subprocess.run([sys.executable, "-m", "incept.cli", "convert", str(data.source),
                             "--out", str(out), "--no-progress"])
    if result.returncode != 0:
        raise UserError(f"converting {data.source} failed (exit code {result.returncode})")


def upload_dataset(client: GatewayClient, data: DemoData, console: Console, root: Path,
                   timeout_s: float = 3600.0) -> dict:
    """Upload the class folders as a tar.gz (unless the gateway has the dataset
    already) and wait until the gateway's conversion job has finished."""
    info = client.dataset(data.name)
    if info is None and _folder_bytes(data.source) > UPLOAD_LIMIT_BYTES:
        # Too big for one upload: convert in place, as `incept convert` does.
        console.print(f"converting {data.source} (too big to upload) into dataset '{data.name}' ...")
        convert_locally(data, root)
    elif info is None or info.get("state") == "failed":
        console.print(f"uploading {data.source} as dataset '{data.name}' ...")
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / f"{data.name}.tar.gz"
            with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
                for class_dir in sorted(p for p in data.source.iterdir() if p.is_dir()):
                    tar.add(class_dir, arcname=class_dir.name)
            client.upload_dataset(data.name, archive)
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.dataset(data.name) or {}
        if info.get("state") == "ready":
            counts = info.get("counts") or {}
            console.print(f"dataset '{data.name}': {info.get('num_classes')} classes "
                          f"{info.get('class_names')}, {counts}")
            return info
        if info.get("state") == "failed":
            raise UserError(f"converting dataset '{data.name}' failed: {info.get('error')}")
        if time.monotonic() > deadline:
            raise UserError(f"dataset '{data.name}' was not converted after {timeout_s:.0f} s")
        time.sleep(1.0)


def _remembered_job(paths: StackPaths, key: str) -> str | None:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        saved = json.loads(paths.demo_file.read_text())
        if saved.get("key") == key:
            return saved.get("job_id")
    return None


def _sample_images(source: Path, limit: int = 5) -> list[Path]:
    """One image of each class (for the prediction shown at the end)."""
    out = []
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        images = sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if images:
            out.append(images[-1])
        if len(out) >= limit:
            break
    return out


def show_results(client: GatewayClient, job: dict, data: DemoData, console: Console) -> None:
    from rich.table import Table

    from incept.console import evaluations_of

    table = Table(title=f"evaluations of {job['job_id']}")
    for col in ("step", "accuracy", "recall@5", "loss", "exported version"):
        table.add_column(col)
    for e in evaluations_of(job):
        table.add_row(str(e.get("step")), f"{e.get('accuracy', 0):.3f}",
                      f"{e.get('recall_at_5', 0):.3f}", f"{e.get('loss', 0):.4f}",
                      str(e.get("exported_version") or ""))
    console.print(table)
    best = job.get("best") or {}
    versions = job.get("exported_versions") or []
    model = job.get("served_model") or job.get("model_name") or data.name
    if best:
        console.print(f"best: step {best.get('step')}, accuracy {best.get('accuracy', 0):.3f}")
    if versions:
        console.print(f"exported: model '{model}' version {max(versions)} "
                      f"(all versions: {', '.join(map(str, versions))})")
        _show_predictions(client, model, data, console)


def _show_predictions(client: GatewayClient, model: str, data: DemoData, console: Console) -> None:
    samples = _sample_images(data.source)
    deadline = time.monotonic() + 60.0
    while True:  # the gateway picks new versions up within a poll interval
        try:
            answer = client.predict(model, [p.read_bytes() for p in samples])
            break
        except GatewayError as e:
            if e.status_code not in (404, 503) or time.monotonic() > deadline:
                console.print(f"prediction failed: {e}")
                return
            time.sleep(1.0)
    console.print(f"predictions by '{model}' version {answer.get('version')}:")
    for path, pred in zip(samples, answer.get("predictions", []), strict=False):
        top = pred.get("top") or [{}]
        verdict = "  [yellow](not one of the known classes)[/]" if pred.get("unknown") else ""
        console.print(f"  {path.parent.name}/{path.name}: {top[0].get('label')} "
                      f"{top[0].get('score', 0):.2f}{verdict}")


@dataclass
class DemoPlan:
    data: DemoData
    weights: DemoWeights
    spec: dict

    @property
    def key(self) -> str:
        """Same data and spec as last time: the same job."""
        return hashlib.sha1(json.dumps([str(self.data.source), self.spec], sort_keys=True)
                            .encode()).hexdigest()


def plan_demo(root: Path, *, data: Path | None = None, checkpoint: str | None = None,
              console: Console | None = None) -> DemoPlan:
    """Choose (and announce) data, weights and spec; bad DATA=/CHECKPOINT= values
    are refused here, before any process starts."""
    console = console or Console()
    root = Path(root).resolve()
    chosen_data = choose_data(data, root, console)
    weights = choose_weights(checkpoint, root, console)
    return DemoPlan(chosen_data, weights, demo_spec(chosen_data, weights))


def run_demo(url: str, token: str | None, root: Path, plan: DemoPlan,
             console: Console | None = None) -> str | None:
    """Run (or follow again) the demo job over HTTP; returns its id."""
    from incept.console import watch

    console = console or Console()
    paths = StackPaths(Path(root).resolve())
    chosen_data, spec, key = plan.data, plan.spec, plan.key
    with GatewayClient(url, token) as client:
        job_id = _remembered_job(paths, key)
        job = None
        if job_id:
            with contextlib.suppress(GatewayError):
                job = client.job(job_id)
        if job is None:
            upload_dataset(client, chosen_data, console, paths.root)
            created = client.submit(spec)
            job_id = created["job_id"]
            write_json_atomic(paths.demo_file, {"key": key, "job_id": job_id, "spec": spec})
            console.print(f"submitted job [bold]{job_id}[/] ({spec['model_name']}, "
                          f"{spec.get('max_steps') or str(spec.get('epochs')) + ' epochs'}) — "
                          f"{url}/v1/jobs/{job_id}")
        else:
            assert job_id is not None  # a remembered job was found
            console.print(f"following the demo job [bold]{job_id}[/] from the last run "
                          f"(state {job.get('state')}, step {job.get('step')})")
        watch(client, job_id, console=console)
        job = client.job(job_id)
        if job.get("state") == "failed":
            console.print(f"[red]the demo job failed[/]: {job.get('error')}")
        show_results(client, job, chosen_data, console)
    page = f"{url}/#token={token}" if token else f"{url}/"
    console.print(f"the page: [bold]{page}[/]  (drop a photo to classify it; jobs view with "
                  "progress, accuracy per step and the confusion matrix)")
    return job_id
