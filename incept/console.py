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


def _clock(seconds) -> str:
    if not isinstance(seconds, int | float) or seconds != seconds:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _Watcher:
    """The live view of one job: a "features" bar while the head-only feature
    pass runs ("features 312/736 · 4.1 img/s · 1:40 left"), a "training" bar,
    one line per checkpoint, phase, evaluation and export."""

    def __init__(self, progress, job: dict):
        self.progress, self.print = progress, progress.console.print
        self.state = job.get("state")
        self.waiting_for: list[int] | None = None
        self.features_task = None
        self.train_task = None
        self.max_steps = job.get("max_steps")
        if isinstance(job.get("features"), dict):
            self.on_features(job["features"])
        # A head-only job's bars in the order it runs them: the stream's replay
        # brings the feature pass first, then training.
        if job.get("path") != "head_only" and job.get("phase") not in ("queued", "features"):
            self.training_bar(job.get("step") or 0)

    def training_bar(self, step: int = 0):
        if self.train_task is None:
            self.train_task = self.progress.add_task("training", total=self.max_steps,
                                                     completed=step, info="")
        return self.train_task

    def handle(self, kind: str, data: dict) -> None:
        handler = getattr(self, f"on_{kind}", None)
        if handler is not None:
            handler(data)

    def on_features(self, data: dict) -> None:
        info = f"· {_fmt(data.get('images_per_sec'), '.1f')} img/s · {_clock(data.get('eta_s'))} left"
        if self.features_task is None:
            self.features_task = self.progress.add_task("features", total=data.get("total"), info=info)
        self.progress.update(self.features_task, completed=data.get("done", 0),
                             total=data.get("total"), info=info)

    def on_progress(self, data: dict) -> None:
        fields = {"total": data["max_steps"]} if data.get("max_steps") else {}
        self.progress.update(self.training_bar(), completed=data.get("step", 0), **fields,
                             info=f"· loss {_fmt(data.get('loss'))} · "
                                  f"{_fmt(data.get('images_per_sec'), '.0f')} img/s · "
                                  f"{_clock(data.get('eta_s'))} left")

    def on_phase(self, data: dict) -> None:
        if data.get("phase") in ("training", "evaluating", "exported"):
            self.training_bar()
        self.print(f"  phase: {data.get('phase')}")

    def on_checkpoint(self, data: dict) -> None:
        self.print(f"  checkpoint at step {data.get('step')}")

    def on_eval(self, data: dict) -> None:
        self.print(f"  evaluated step {data.get('step')}: accuracy {_fmt(data.get('accuracy'), '.3f')}"
                   f"  recall@5 {_fmt(data.get('recall_at_5'), '.3f')}  loss {_fmt(data.get('loss'))}")

    def on_export(self, data: dict) -> None:
        self.print(f"  [green]exported[/] {data.get('model')} version {data.get('version')}")

    def on_error(self, data: dict) -> None:
        self.print(f"  [red]error[/]: {data.get('error') or data}")

    def on_state(self, data: dict) -> None:
        self.state = data.get("state", self.state)
        if data.get("max_steps"):
            self.max_steps = data["max_steps"]
            if self.train_task is not None:
                self.progress.update(self.train_task, total=self.max_steps)
        self.print(f"  state: {self.state}")

    def on_waiting(self, data: dict) -> None:
        steps = data.get("pending_evaluations") or []
        if steps == self.waiting_for:
            return  # a resumed stream says again what the last one said
        self.waiting_for = steps
        self.print(f"  training {data.get('state')}; waiting for the evaluation of "
                   f"step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))} ...")

    def on_end(self, data: dict) -> None:
        self.state = data.get("state", self.state)


def watch(client: GatewayClient, job_id: str, console=None) -> int:
    """Follow a job live from its event stream (see ``_Watcher``) until the
    gateway ends the stream (training over and every checkpoint evaluated),
    waiting while the gateway is at its limit of event streams and resuming a
    dropped stream. Returns 0 if the job succeeded."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = console or Console()
    job = client.job(job_id)
    console.print(f"following {job_id}")
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), console=console)

    def busy(delay_s: float) -> None:
        console.print(f"the gateway is at its event-stream limit; retrying in {delay_s:g} s")

    with progress:
        watcher = _Watcher(progress, job)
        for event in client.events(job_id, on_busy=busy):
            watcher.handle(event.type, event.data if isinstance(event.data, dict) else {})
    state = watcher.state
    job = client.job(job_id)
    console.print(f"{job_id}: {state}" + (f" — {job['error']}" if job.get("error") else ""))
    return 0 if state == "succeeded" else 1
