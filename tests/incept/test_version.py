"""The version has one home, pyproject.toml; everything that shows one agrees with it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import incept
from incept.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_package_version_is_pyprojects():
    assert incept.__version__ == VERSION


def test_incept_version_prints_it():
    out = subprocess.run([sys.executable, "-m", "incept.cli", "--version"], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert out.strip() == f"incept {VERSION}"


def test_image_tags_in_manifests_and_settings_follow_the_version():
    """Images are tagged with the version they were built from: no manifest may name
    another tag of incept's own images."""
    tags = set()
    for path in [*ROOT.glob("k8s/**/*.yaml"), *ROOT.glob("docker-compose*.yml"),
                 ROOT / ".env.example", *ROOT.glob("docker/*.Dockerfile")]:
        tags |= {(path.name, t) for t in re.findall(r"incept-(?:trainer|evaluator|gateway|"
                                                    r"tensorboard):([\w.+-]+)", path.read_text())}
    assert tags, "no incept image is named anywhere"
    assert {t for _, t in tags} == {VERSION}, sorted(tags)
    assert Settings.model_fields["trainer_image"].default == f"incept-trainer:{VERSION}"
