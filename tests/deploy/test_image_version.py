"""Every image `make images` built carries the version it was built from, as the
OCI label org.opencontainers.image.version, and is tagged with it."""

from __future__ import annotations

import tomllib

from deploy_support import REPO
from podman_support import IMAGES, podman, require_images

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_built_images_are_labelled_with_the_version():
    require_images()
    for name, image in IMAGES.items():
        label = podman("image", "inspect", "--format",
                       '{{index .Labels "org.opencontainers.image.version"}}', image).stdout.strip()
        assert label == VERSION, (name, image, label)
        if name != "redis":  # Redis is tagged with its own version
            assert image.endswith(f":{VERSION}"), image
