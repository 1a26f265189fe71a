"""What the images install is what the code imports: the closure of
pyproject.toml's dependencies (as pip resolves it, read offline from the
installed metadata) plus docker/runtime-extras.txt covers every third-party
import of incept/, services/ and the scripts in docker/; and every file the
Dockerfiles COPY is let through by .dockerignore."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_support import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
SERVICE_DOCKERFILES = [REPO / f"docker/{n}.Dockerfile"
                       for n in ("trainer", "evaluator", "gateway", "tfserving-standin")]


def closure(requirements: list[str]) -> set[str]:
    """Distributions pip installs for these requirements (markers and extras honoured)."""
    seen: set[tuple[str, frozenset]] = set()
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for raw in md.distribution(req.name).requires or []:
            dep = Requirement(raw)
            extras = req.extras or {""}
            if dep.marker and not any(dep.marker.evaluate({"extra": e}) for e in extras):
                continue
            stack.append(dep)
    return {name for name, _ in seen}


def extras() -> list[str]:
    lines = (REPO / "docker/runtime-extras.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def third_party_imports() -> dict[str, set[str]]:
    """top-level module -> files importing it (module level or inside functions)."""
    files = [*REPO.joinpath("incept").rglob("*.py"), *REPO.joinpath("services").rglob("*.py"),
             *REPO.joinpath("docker").glob("*.py")]
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                # tests: the TF Serving stand-in image ships tests/fakes (checked below).
                if top not in sys.stdlib_module_names and top not in ("incept", "services", "tests"):
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_import_of_the_services_is_installed_in_the_images():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    installed = closure(project) | {canonicalize_name(e) for e in extras()}
    providers = md.packages_distributions()
    missing = {}
    for module, users in third_party_imports().items():
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists & installed:
            missing[module] = sorted(users)
    assert missing == {}


def test_extras_are_pinned_by_the_lock_and_installed_without_their_dependencies(lock):
    for name in extras():
        assert canonicalize_name(name) in {canonicalize_name(k) for k in lock}, name
    for dockerfile in SERVICE_DOCKERFILES:
        text = dockerfile.read_text()
        assert "--no-deps --constraint requirements.lock -r runtime-extras.txt" in text, dockerfile
        # pyproject's dependencies under the lock's pins, then the project without deps.
        assert "['project']['dependencies']" in text, dockerfile
        assert "--constraint requirements.lock setuptools wheel -r runtime-requirements.txt" in text
        assert "--no-deps --no-build-isolation .\n" in text, dockerfile


def build_stage_prefix(dockerfile) -> str:
    text = dockerfile.read_text()
    start = text.index("FROM ${PYTHON_IMAGE} AS build")
    return text[start:text.index("--no-build-isolation .\n", start)]


def test_the_images_share_one_dependency_layer():
    """The same first instructions in every Python service image: podman's (and
    Docker's) layer cache then installs TensorFlow and the rest once for all."""
    prefixes = {d.name: build_stage_prefix(d) for d in SERVICE_DOCKERFILES}
    assert len(set(prefixes.values())) == 1, prefixes


def test_the_tfserving_standin_image_ships_the_double_it_imports():
    text = (REPO / "docker/tfserving-standin.Dockerfile").read_text()
    standin = (REPO / "docker/tfserving_standin.py").read_text()
    assert "from tests.fakes.tfserving import" in standin
    fakes = {line.split()[1] for line in (REPO / "tests/fakes/tfserving.py").read_text().splitlines()
             if line.startswith("from tests.")}
    for module in {"tests.fakes.tfserving", *fakes}:
        assert module.replace(".", "/") + ".py" in text, module
    assert "/usr/local/bin/tensorflow_model_server" in text


def dockerignore_allows(path: str) -> bool:
    """.dockerignore semantics for this file's shape: `**` then `!` re-includes."""
    allowed = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if re.fullmatch(regex, path) or (not negate and pattern == "**"):
            allowed = negate
        elif negate and path.startswith(pattern + "/"):
            allowed = True
    return allowed


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_file_reaches_the_build_context(dockerfile):
    for line in dockerfile.read_text().splitlines():
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        parts = [p for p in line.split()[1:] if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), (dockerfile.name, source)
            assert dockerignore_allows(source.rstrip("/")), (dockerfile.name, source)


def test_dockerignore_keeps_secrets_and_venvs_out():
    for path in (".env", ".venv/bin/python", ".git/config", "var/runs/x", "tests/conftest.py"):
        assert not dockerignore_allows(path), path
    assert Path(REPO / ".dockerignore").read_text().splitlines()[2] == "**"
