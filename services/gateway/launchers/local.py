"""The rq queue ``train``: a trainer worker (``incept trainer``) picks the job up."""

from __future__ import annotations

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import JobStatus

from incept.queues import enqueue_training, fetch_request, request_status, train_request_id
from services.gateway.launchers.base import Launcher


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, conn: redis.Redis):
        self.conn = conn

    def launch(self, job_id: str) -> str:
        return enqueue_training(self.conn, job_id).id

    def cancel(self, job_id: str) -> bool:
        try:
            job = fetch_request(self.conn, train_request_id(job_id))
        except NoSuchJobError:
            return False
        if job.get_status() in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
            try:
                job.cancel()
            except InvalidJobOperation:
                return False
            return True
        return False

    def status(self, job_id: str) -> dict | None:
        status = request_status(self.conn, train_request_id(job_id))
        return None if status is None else {"launcher": self.name, "rq_status": status.value}
