"""Session-scoped inputs for the deployment checks: each kustomize overlay is
rendered once per session, the compose files are read once."""

import pytest
from deploy_support import REPO, job_templates, load_compose, read_lock, render_overlays


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return render_overlays()


@pytest.fixture(scope="session")
def templates(rendered) -> dict[str, dict[str, dict]]:
    """overlay -> {file name: trainer Job template}, as the gateway will read them."""
    return {overlay: job_templates(objs) for overlay, objs in rendered.items()}


@pytest.fixture(scope="session")
def compose() -> dict:
    return load_compose(REPO / "docker-compose.yml")


@pytest.fixture(scope="session")
def compose_cpu() -> dict:
    return load_compose(REPO / "docker-compose.cpu.yml")


@pytest.fixture(scope="session")
def lock() -> dict[str, str]:
    return read_lock()
