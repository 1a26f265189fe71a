"""The whole system on one machine, as local processes.

``Stack`` (``supervisor``) starts a real Redis (append-only persistence under
the data root), the evaluator worker, a trainer worker and the gateway
(in-process prediction backend) as child processes (``process``), each in its
own process group with its own log file under ``<data root>/logs/``. It waits
until each is healthy, records a state file (pids, ports, URL, API token;
``state``) under ``<data root>/stack/`` for ``incept up --detach`` / ``incept
down`` (``control``) / the CLI client, and stops every child cleanly.
Everything a job needs lives in Redis (persisted) and on the data root, so the
next ``incept up`` resumes where this one stopped (``incept.queues`` queues
the interrupted training jobs again)."""

from incept.stack.control import stop_orphans, stop_stack, wait_ready_state
from incept.stack.process import Child
from incept.stack.state import StackError, StackPaths, default_data_root, read_state
from incept.stack.supervisor import HEALTH_TIMEOUT_S, SERVICES, STOP_TIMEOUT_S, Stack

__all__ = [
    "HEALTH_TIMEOUT_S",
    "SERVICES",
    "STOP_TIMEOUT_S",
    "Child",
    "Stack",
    "StackError",
    "StackPaths",
    "default_data_root",
    "read_state",
    "stop_orphans",
    "stop_stack",
    "wait_ready_state",
]
