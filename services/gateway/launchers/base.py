"""Where a submitted job runs: the rq queue ``train`` (local and docker
compose stacks) or a Kubernetes Job. The job's spec is already at
``runs/<id>/spec.json`` when ``launch`` is called."""

from __future__ import annotations

from abc import ABC, abstractmethod


class Launcher(ABC):
    name: str = "base"

    @abstractmethod
    def launch(self, job_id: str) -> str:
        """Start the job; returns a reference (rq job id, Kubernetes Job name)."""

    @abstractmethod
    def cancel(self, job_id: str) -> bool:
        """Stop it. Returns True if it never started (so it is cancelled right away);
        a running trainer sees the cancel flag and stops with a final checkpoint."""

    @abstractmethod
    def status(self, job_id: str) -> dict | None:
        """What the launcher knows about the job (None: nothing)."""
