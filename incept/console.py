"""Jobs on a terminal: the job table, one job's panel, and ``watch``, which
follows a job live from the gateway's event stream (``incept status|watch``,
``incept submit --watch`` and the demo job of ``incept up``)."""

from __future__ import annotations

from incept.client import GatewayClient


def _fmt(value, spec: str = ".4g") -> str:
    if value is None or value == "":
        return "-"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def evaluations_of(job: dict) -> list[dict]:
    evals = job.get("evaluations") or []
    return sorted((e for e in evals if isinstance(e, dict)), key=lambda e: e.get("step", 0))


def jobs_table(jobs: list[dict]):
    import time

    from rich.table import Table

    table = Table(title="jobs")
    table.add_column("job", overflow="fold")
    for col, width in (("state", 9), ("step", 9), ("best accuracy", 8), ("model", 10), ("created", 10)):
        table.add_column(col, min_width=width, overflow="fold")
    for job in jobs:
        best = job.get("best") or {}
        step = f"{job.get('step') or 0}/{job.get('max_steps') or '-'}"
        created = job.get("created_at")
        table.add_row(str(job.get("job_id")), str(job.get("state", "-")), step,
                      _fmt(best.get("accuracy"), ".3f"), str(job.get("model_name") or "-"),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if created else "-")
    return table


def job_panel(job: dict):
    from rich.console import Group
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    for key in ("job_id", "state", "step", "max_steps", "loss", "learning_rate", "images_per_sec",
                "eta_s", "last_checkpoint_step", "model_name", "exported_versions", "error"):
        value = job.get(key)
        if value not in (None, "", []):
            head.add_row(key, _fmt(value) if isinstance(value, float) else str(value))
    best = job.get("best") or {}
    if best:
        head.add_row("best", f"step {best.get('step')} accuracy {_fmt(best.get('accuracy'), '.3f')}")
    evals = Table(title="evaluations")
    for col in ("step", "accuracy", "recall@5", "loss"):
        evals.add_column(col)
    for e in evaluations_of(job):
        evals.add_row(str(e.get("step")), _fmt(e.get("accuracy"), ".3f"),
                      _fmt(e.get("recall_at_5"), ".3f"), _fmt(e.get("loss")))
    return Group(head, evals) if evals.row_count else head


def watch(client: GatewayClient, job_id: str, console=None) -> int:
    """Follow a job live from its event stream: a progress bar for the steps,
    one line per evaluation and export, until the gateway ends the stream (training
    over and every checkpoint evaluated). Returns 0 if the job succeeded."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = console or Console()
    job = client.job(job_id)
    total = job.get("max_steps")
    console.print(f"following {job_id}")
    progress = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}  {task.fields[ips]} img/s"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    state = job.get("state")
    with progress:
        task = progress.add_task("train", total=total, completed=job.get("step") or 0, job=job_id,
                                 loss=_fmt(job.get("loss")), ips=_fmt(job.get("images_per_sec"), ".0f"))
        for event in client.events(job_id):
            data = event.data if isinstance(event.data, dict) else {}
            if event.type == "progress":
                fields = {"completed": data.get("step", 0)}
                if data.get("max_steps"):
                    fields["total"] = data["max_steps"]
                progress.update(task, loss=_fmt(data.get("loss")),
                                ips=_fmt(data.get("images_per_sec"), ".0f"), **fields)
            elif event.type == "checkpoint":
                progress.console.print(f"  checkpoint at step {data.get('step')}")
            elif event.type == "eval":
                progress.console.print(
                    f"  evaluated step {data.get('step')}: accuracy {_fmt(data.get('accuracy'), '.3f')}"
                    f"  recall@5 {_fmt(data.get('recall_at_5'), '.3f')}  loss {_fmt(data.get('loss'))}")
            elif event.type == "export":
                progress.console.print(f"  [green]exported[/] {data.get('model')} version "
                                       f"{data.get('version')}")
            elif event.type == "error":
                progress.console.print(f"  [red]error[/]: {data.get('error') or data}")
            elif event.type == "state":
                state = data.get("state", state)
                if data.get("max_steps"):
                    progress.update(task, total=data["max_steps"])
                progress.console.print(f"  state: {state}")
            elif event.type == "waiting":
                steps = data.get("pending_evaluations") or []
                progress.console.print(f"  training {data.get('state')}; waiting for the evaluation "
                                       f"of step{'s' if len(steps) > 1 else ''} "
                                       f"{', '.join(map(str, steps))} ...")
            elif event.type == "end":
                state = data.get("state", state)
    job = client.job(job_id)
    console.print(f"{job_id}: {state}" + (f" — {job['error']}" if job.get("error") else ""))
    return 0 if state == "succeeded" else 1
