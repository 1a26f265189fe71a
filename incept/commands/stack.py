"""``incept up`` and ``incept down``: the whole system as local processes.

``incept up`` starts Redis, the evaluator, a trainer worker and the gateway
(see ``incept.stack``), runs the demo job over HTTP (``incept.demo``) and keeps
serving until Ctrl-C / SIGTERM, which stops every process it started.
``--detach`` does the same in the background and returns once the stack is
healthy; ``incept down`` stops it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from incept.errors import UserError
from incept.stack import (
    HEALTH_TIMEOUT_S,
    Stack,
    StackPaths,
    default_data_root,
    stop_stack,
    wait_ready_state,
)


def _add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where datasets, runs, models, Redis data and logs live "
                             "(default: INCEPT_DATA_ROOT, else ./var)")


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_root(parser)
    parser.add_argument("--port", type=int, default=8000,
                        help="gateway port on 127.0.0.1 (0: any free port; default 8000)")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="a folder of class folders of photos for the demo job "
                             "(default: the flowers archive if it can be downloaded, else generated images)")
    parser.add_argument("--checkpoint", default=None, metavar="PREFIX",
                        help="the Inception v4 checkpoint to fine-tune from (default: the official "
                             "one if it can be downloaded, else random initialisation)")
    parser.add_argument("--detach", action="store_true",
                        help="run in the background; return once healthy (stop with 'incept down')")
    parser.add_argument("--no-demo", action="store_true", help="start the stack only, submit no demo job")


def add_down_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_root(parser)


def run_down(args: argparse.Namespace) -> int:
    root = (args.data_root or default_data_root()).resolve()
    url = stop_stack(root)
    print(f"stopped the stack for {root}" + (f" ({url})" if url else ""))
    return 0


def run_up(args: argparse.Namespace) -> int:
    root = (args.data_root or default_data_root()).resolve()
    if args.detach:
        return _up_detached(args, root)
    return _up_foreground(args, root)


def _up_detached(args: argparse.Namespace, root: Path) -> int:
    if not args.no_demo:
        # Here, in the foreground: bad DATA/CHECKPOINT are refused right away and
        # downloads show their progress; the background stack finds them done.
        from rich.console import Console

        from incept.demo import plan_demo

        plan_demo(root, data=args.data, checkpoint=args.checkpoint, console=Console(soft_wrap=True))
    paths = StackPaths(root)
    paths.logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "incept.cli", "up", "--data-root", str(root), "--port", str(args.port)]
    if args.data:
        argv += ["--data", str(args.data.resolve())]
    if args.checkpoint:
        argv += ["--checkpoint", str(args.checkpoint)]
    if args.no_demo:
        argv.append("--no-demo")
    with open(paths.log_file("supervisor"), "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    print(f"starting the stack in the background (log: {paths.log_file('supervisor')}) ...", flush=True)
    state = wait_ready_state(root, process, HEALTH_TIMEOUT_S + 60)
    print(f"incept is up at {state['url']}  (pid {state['supervisor_pid']})")
    print(f"API token: {state['token']}")
    print(f"logs: {paths.logs}/   stop with: incept down --data-root {root}")
    if not args.no_demo:
        print("the demo job runs in the background: follow it with 'incept status' / 'incept watch JOB'")
    return 0


class _Shutdown(Exception):
    """SIGTERM: stop like Ctrl-C."""


def _up_foreground(args: argparse.Namespace, root: Path) -> int:
    from rich.console import Console

    console = Console(soft_wrap=True)  # a log file (--detach) gets whole lines
    logging.getLogger("incept.stack").setLevel(logging.INFO)

    def on_sigterm(signum, frame):
        raise _Shutdown()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)  # the terminal went away
    stack = Stack(root, port=args.port)
    stop_event = threading.Event()
    console.print(f"[bold]incept[/]: starting Redis, the evaluator, a trainer and the gateway "
                  f"(data root {root}, logs in {stack.paths.logs}/)")
    plan = None
    if not args.no_demo:
        from incept.demo import plan_demo

        plan = plan_demo(root, data=args.data, checkpoint=args.checkpoint, console=console)
    try:
        stack.start()
        console.print(f"[green]ready[/]: gateway at [bold]{stack.url}[/]  API token: {stack.token}")
        threading.Thread(target=stack.supervise, args=(stop_event,), name="supervise",
                         daemon=True).start()
        if plan is not None:
            from incept.demo import run_demo

            try:
                run_demo(stack.url, stack.token, root, plan, console=console)
            except UserError as e:  # the stack itself is fine: keep serving
                console.print(f"[red]the demo job did not complete[/]: {e}")
        console.print(f"serving at [bold]{stack.url}[/] — press Ctrl-C to stop "
                      "(everything is kept; the next 'make up' resumes)")
        stop_event.wait()
    except (KeyboardInterrupt, _Shutdown):
        with contextlib.suppress(OSError):  # the terminal may be gone
            console.print("\nstopping (the trainer writes a checkpoint first) ...")
    finally:
        stop_event.set()
        # A second Ctrl-C must not cut the trainer's final checkpoint short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
    with contextlib.suppress(OSError):
        console.print(f"stopped; datasets, runs, models and queues are kept under {root}")
    return 0
