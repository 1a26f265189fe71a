#!/usr/bin/env python
"""Keeps TensorFlow Serving's model config in step with the shared volume.

Served model names come from job specs (``served_model_name``, else the
dataset's name), so no static config can list them. This writes a
``ModelServerConfig`` (text protobuf, built with tensorflow-serving-api's own
message types) naming every ``models/<name>/`` that holds at least one integer
version; TF Serving re-reads it (``--model_config_file_poll_wait_seconds``) and
polls each base path for new versions. Installed as ``incept-tfserving-config``:

    incept-tfserving-config write            write once (an init container)
    incept-tfserving-config watch            rewrite on change until SIGTERM (a sidecar)
    incept-tfserving-config ready [--rest URL]
        the config exists and parses; with --rest, TF Serving serves what it
        can: some model in it has an AVAILABLE version (the broken ones are
        named on stderr), or none is configured yet
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import urllib.request
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2 as pb

from incept.fsutil import write_text_atomic
from incept.layout import NAME_RE, list_versions, pinned_version
from incept.settings import Settings

CONFIG_RELATIVE = Path("serving/models.config")


def default_config_path() -> Path:
    return Settings().layout.root / CONFIG_RELATIVE


def served_models(models_root: Path) -> list[str]:
    """Model folders with at least one complete (integer-named) version.
    Exports are atomic renames, so a version folder's presence means complete."""
    if not models_root.is_dir():
        return []
    return sorted(
        d.name for d in models_root.iterdir()
        if d.is_dir() and NAME_RE.match(d.name)
        and any(v.is_dir() and v.name.isdigit() for v in d.iterdir())
    )


def build_config(models_root: Path, versions: int = 1) -> pb.ModelServerConfig:
    config = pb.ModelServerConfig(model_config_list=pb.ModelConfigList())
    for name in served_models(models_root):
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = str(models_root / name)
        entry.model_platform = "tensorflow"
        pinned = pinned_version(models_root / name)
        if pinned in list_versions(models_root / name):  # the page's pin or rollback
            entry.model_version_policy.specific.versions.append(pinned)
        else:
            entry.model_version_policy.latest.num_versions = versions
    return config


def write(out: Path, models_root: Path) -> bool:
    """Write the config if it changed; True when it did."""
    text = ("# Written by incept-tfserving-config from the folders under "
            f"{models_root}; do not edit.\n" + text_format.MessageToString(build_config(models_root)))
    if out.exists() and out.read_text() == text:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    return True


def read(out: Path) -> pb.ModelServerConfig:
    return text_format.Parse(out.read_text(), pb.ModelServerConfig())


def ready(out: Path, rest: str | None, timeout: float = 3.0) -> tuple[str | None, list[str]]:
    """(why TF Serving is not ready, or None; the models it cannot serve).

    Ready means serving what it can: one model that fails to load (a broken
    export, a version TF Serving refuses) must not take every other model out of
    the Service, so the pod is ready while at least one configured model has an
    AVAILABLE version (or none is configured yet), and the broken ones are named."""
    try:
        config = read(out)
    except (OSError, text_format.ParseError) as e:
        return f"no usable model config at {out}: {e}", []
    if rest is None:
        return None, []
    models = [m.name for m in config.model_config_list.config]
    broken = [p for p in (_model_problem(rest, name, timeout) for name in models) if p]
    if models and len(broken) == len(models):
        return "no model is served: " + "; ".join(broken), broken
    return None, broken


def _model_problem(rest: str, name: str, timeout: float) -> str | None:
    url = f"{rest.rstrip('/')}/v1/models/{name}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (local URL)
            status = json.load(response).get("model_version_status", [])
    except Exception as e:
        return f"model {name!r}: {url}: {type(e).__name__}: {e}"
    if any(v.get("state") == "AVAILABLE" for v in status):
        return None
    why = "; ".join(f"version {v.get('version')} {v.get('state')}"
                    + (f" ({v['status']['error_message']})"
                       if (v.get("status") or {}).get("error_message") else "")
                    for v in status)
    return f"model {name!r} has no AVAILABLE version ({why or 'none loaded'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="incept-tfserving-config",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"config file (default: <INCEPT_DATA_ROOT>/{CONFIG_RELATIVE})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("write")
    watch = sub.add_parser("watch")
    watch.add_argument("--interval", type=float, default=10.0)
    check = sub.add_parser("ready")
    check.add_argument("--rest", default=None, help="TF Serving REST base URL")
    args = parser.parse_args(argv)
    out = args.out or default_config_path()
    models_root = Settings().layout.models

    if args.command == "ready":
        problem, broken = ready(out, args.rest)
        if problem:
            print(f"not ready: {problem}", file=sys.stderr)
            return 1
        if broken:  # still ready: the probe's output shows in `kubectl describe pod`
            print("serving what it can; not served: " + "; ".join(broken), file=sys.stderr)
        return 0
    if args.command == "write":
        write(out, models_root)
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        try:
            if write(out, models_root):
                print(f"models.config: {served_models(models_root)}", flush=True)
        except OSError as e:  # a volume hiccup: keep the last good config, try again
            print(f"cannot update {out}: {e}", file=sys.stderr, flush=True)
        if stop.wait(args.interval):
            return 0


if __name__ == "__main__":
    sys.exit(main())
