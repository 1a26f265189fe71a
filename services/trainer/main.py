"""``incept train SPEC.yaml [--job-id ID]`` and ``incept train --job-id ID``:
one training job in this process (also the Kubernetes Job's container command).

Exit codes: 0 done (succeeded or cancelled), 2 bad input, 143 preempted by
SIGTERM after writing a checkpoint (a restart resumes from it)."""

from __future__ import annotations

import argparse

from incept.errors import UserError
from incept.fsutil import write_json_atomic
from incept.settings import get_settings

PREEMPTED_EXIT = 143


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="job spec (YAML or JSON); omit to train a submitted job")
    parser.add_argument("--job-id", help="job id (default: generated from the spec's dataset)")
    parser.add_argument("--data-root", help="shared volume root (default: INCEPT_DATA_ROOT)")
    parser.add_argument("--redis-url", help="Redis for progress and eval requests "
                                            "(default: INCEPT_REDIS_URL; 'none' to run without)")
    parser.add_argument("--progress-interval", type=float, default=5.0, help="seconds between reports")


def prepare_run(layout, spec_path: str, job_id: str | None) -> str:
    """Validate the spec and create runs/<id>/spec.json (before anything starts)."""
    from incept.layout import check_name, new_job_id
    from incept.spec import load_spec

    try:
        spec = load_spec(spec_path)
    except FileNotFoundError:
        raise UserError(f"no spec file {spec_path}") from None
    if job_id is None:
        job_id = new_job_id(spec.serving_name())
    try:
        check_name(job_id, "job id")
    except ValueError as e:
        raise UserError(str(e)) from None
    run = layout.run(job_id)
    if run.spec.exists():
        existing = run.spec.read_text()
        if existing.strip() != spec.model_dump_json().strip():
            raise UserError(f"job {job_id} exists with a different spec; choose another --job-id")
    else:
        run.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.spec, spec.model_dump(mode="json"))
    return job_id


def run(args: argparse.Namespace) -> int:
    from incept.layout import Layout

    settings = get_settings()
    layout = Layout(args.data_root) if args.data_root else settings.layout
    layout.ensure()
    if args.spec:
        job_id = prepare_run(layout, args.spec, args.job_id)
    elif args.job_id:
        job_id = args.job_id
        try:
            if not layout.run(job_id).spec.exists():
                raise UserError(f"job {job_id} has no spec at {layout.run(job_id).spec}")
        except ValueError as e:
            raise UserError(str(e)) from None
    else:
        raise UserError("give a spec file, or --job-id of a submitted job")
    redis_url = args.redis_url or settings.redis_url
    if redis_url == "none":
        redis_url = None

    from incept.training.trainer import train

    print(f"job {job_id}")
    result = train(job_id, layout, redis_url=redis_url, progress_interval_s=args.progress_interval)
    print(f"job {job_id}: {result.state} at step {result.step}/{result.max_steps} "
          f"({result.path} path; checkpoints {result.checkpoints})")
    return PREEMPTED_EXIT if result.state == "preempted" else 0
