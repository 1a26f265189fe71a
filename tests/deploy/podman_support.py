"""Helpers for the container tests (podman, as root, with the project's
containers.conf): the images `make images` builds, running `make` targets,
waiting for conditions, and a photo dataset generated as an upload archive."""

from __future__ import annotations

import os
import socket
import subprocess
import tarfile
import time
import tomllib
from pathlib import Path

import pytest
from deploy_support import REPO

CONTAINERS_CONF = REPO / "docker/podman/containers.conf"
TAG = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGES = {
    "gateway": f"localhost/incept-gateway:{TAG}",
    "evaluator": f"localhost/incept-evaluator:{TAG}",
    "trainer": f"localhost/incept-trainer:{TAG}",
    "tensorboard": f"localhost/incept-tensorboard:{TAG}",
    "tfserving": f"localhost/incept-tfserving-standin:{TAG}",
    "redis": "localhost/incept-redis:7.0",
}
WAIT_S = 600.0  # an upper bound for one stage on a loaded 2-core machine, not a timing assertion


def env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, env=env(),
                          timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-3000:]}"
    return done


def require_images() -> None:
    """The images are built by `make images` (a prerequisite of `make test`);
    a missing one fails here with what to do."""
    missing = [image for image in IMAGES.values()
               if podman("image", "exists", image, check=False).returncode != 0]
    if missing:
        pytest.fail(f"images not built: {', '.join(missing)}; run `make images` "
                    "(podman, as root; see docker/podman/)")


def make(*targets: str, timeout: float = 900, **variables: str) -> subprocess.CompletedProcess:
    argv = ["make", "--no-print-directory", "-C", str(REPO), *targets,
            *(f"{k}={v}" for k, v in variables.items())]
    done = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, condition, timeout_s: float = WAIT_S, on_timeout=None):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{detail}")
        time.sleep(2.0)


def photo_archive(tmp_path: Path, classes: int = 3, per_class: int = 24) -> tuple[Path, list[str]]:
    """Generated class folders of JPEG photos, as a .tar.gz a user uploads."""
    from incept.data.synthetic import write_class_folders

    photos = tmp_path / "photos"
    names = write_class_folders(photos, num_classes=classes, per_class=per_class, size=(48, 40))
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in names:
            tar.add(photos / name, arcname=name)
    return archive, names


def upload_and_convert(client, name: str, tmp_path: Path, who: str, logs) -> list[str]:
    """Upload a generated photo archive as `name`; wait until `who` converted it."""
    archive, names = photo_archive(tmp_path)
    client.upload_dataset(name, archive)
    info = wait_for(f"{who} to convert the upload",
                    lambda: (d := client.dataset(name)) and d["state"] in ("ready", "failed") and d,
                    on_timeout=logs)
    assert info["state"] == "ready" and info["class_names"] == names, info
    return names
