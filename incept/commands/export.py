"""``incept export --run RUN_DIR [--step N] --out MODEL_BASE``: export a
checkpoint by hand, exactly as the evaluator exports a blessed one (same
signature, open-set score fitted on the run's dataset, atomic new version)."""

from __future__ import annotations

import argparse
from pathlib import Path

from incept.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="the run folder (runs/<job_id>)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest complete one)")
    parser.add_argument("--out", required=True, type=Path,
                        help="model base folder; the export becomes <out>/<next version>/")
    parser.add_argument("--version", type=int, help="explicit version number (must be free)")
    parser.add_argument("--keep", type=int, help="keep only the newest K versions")
    parser.add_argument("--data-root", type=Path,
                        help="data root the run's dataset lives in (default: the run's ../..)")
    parser.add_argument("--no-open-set", action="store_true",
                        help="skip fitting the open-set score (ood_score 0, never unknown)")


def run(args: argparse.Namespace) -> int:
    from incept.checkpoints import restore_for_inference
    from incept.export import build_manifest, export_model
    from incept.layout import Layout, RunLayout

    run_dir = args.run.resolve()
    if not run_dir.is_dir():
        raise UserError(f"{args.run} is not a run folder")
    run_layout = RunLayout(run_dir)
    layout = Layout(args.data_root) if args.data_root else Layout(run_dir.parent.parent)
    restored = restore_for_inference(run_layout, args.step, layout=layout)
    spec = restored.spec
    image_size = spec.resolved_image_size()
    manifest = build_manifest(args.out.name, run_layout.job_id, restored.step, spec,
                              ema=restored.ema_applied)
    ood = None
    if not args.no_open_set:
        from incept.data.dataset import DatasetInfo
        from incept.evaluation.metrics import classification_metrics, run_split
        from incept.evaluation.open_set import fit_open_set

        dataset_dir = spec.dataset_dir(layout)
        info = DatasetInfo.load(dataset_dir)
        validation = run_split(restored.model, dataset_dir, "validation", image_size=image_size)
        metrics = classification_metrics(validation.logits, validation.labels, restored.class_names)
        ood, calibration = fit_open_set(restored.model, dataset_dir, image_size=image_size,
                                        num_classes=len(restored.class_names), validation=validation)
        manifest = build_manifest(args.out.name, run_layout.job_id, restored.step, spec,
                                  ema=restored.ema_applied, dataset_fingerprint=info.fingerprint,
                                  metrics=metrics, ood_calibration=calibration)
    try:
        result = export_model(restored.model, restored.class_names, args.out,
                              image_size=image_size, ood=ood, manifest=manifest,
                              version=args.version, keep=args.keep)
    except FileExistsError as e:
        raise UserError(str(e)) from None
    print(f"exported {run_layout.job_id} step {restored.step} to {result.path}")
    return 0
