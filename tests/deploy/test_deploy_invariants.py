"""The invariants that matter, on the rendered overlays and on the trainer Job
templates the gateway launches: least privilege for every container, the
gateway's Role = the launcher's calls, GPU only in the gpu overlay, TF Serving
= the TensorFlow of the lock file, one shared volume at one path, network
isolation, and configuration the Settings class accepts."""

from __future__ import annotations

import ast
import copy
import re

import pytest
from deploy_support import OVERLAYS, REPO, default_image, pod_specs

from incept.settings import Settings
from services.gateway.launchers.kubernetes import build_job

LAUNCHER = REPO / "services/gateway/launchers/kubernetes.py"
WRITABLE_VOLUMES = {"data", "tmp", "redis-data"}
# What the issue grants the launcher; the launcher's actual calls are added below.
ISSUE_GRANTS = {("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")} | {
    ("", "pods", "get"), ("", "pods", "list"), ("", "pods/log", "get")}
CLIENT_VERBS = {"create": "create", "read": "get", "list": "list", "delete": "delete",
                "patch": "patch", "replace": "update"}
CLIENT_GROUPS = {"job": ("batch", "jobs"), "pod": ("", "pods")}


def all_pod_specs(rendered, templates, overlay) -> list[tuple[str, dict]]:
    specs = pod_specs(rendered[overlay])
    for name, template in templates[overlay].items():
        specs.append((f"template/{name}", build_job(template, "flowers-1")["spec"]["template"]["spec"]))
    return specs


def all_pod_templates(rendered, templates, overlay) -> list[tuple[str, dict]]:
    """(name, pod template with labels) for every workload, launched Jobs included."""
    out = []
    for o in rendered[overlay]:
        if o["kind"] in ("Deployment", "StatefulSet"):
            out.append((o["metadata"]["name"], o["spec"]["template"]))
    for name, template in templates[overlay].items():
        out.append((name, build_job(template, "flowers-1")["spec"]["template"]))
    return out


def objects(rendered, overlay, kind) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in rendered[overlay] if o["kind"] == kind}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_with_least_privilege(rendered, templates, overlay):
    for where, spec in all_pod_specs(rendered, templates, overlay):
        pod_sc = spec.get("securityContext", {})
        containers = spec.get("initContainers", []) + spec["containers"]
        for c in containers:
            who = f"{where}/{c['name']}"
            sc = c.get("securityContext", {})
            merged = {**pod_sc, **sc}
            assert merged.get("runAsNonRoot") is True, who
            assert merged.get("runAsUser", 0) >= 10000, who
            assert merged.get("seccompProfile", {}).get("type") == "RuntimeDefault", who
            assert sc.get("allowPrivilegeEscalation") is False, who
            assert sc.get("readOnlyRootFilesystem") is True, who
            assert sc.get("privileged", False) is False, who
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], who
            assert not sc.get("capabilities", {}).get("add"), who
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), (who, part)
            for mount in c.get("volumeMounts", []):
                if not mount.get("readOnly"):
                    assert mount["name"] in WRITABLE_VOLUMES, (who, mount)
        for c in spec["containers"]:
            assert "livenessProbe" in c and "readinessProbe" in c, f"{where}/{c['name']}"
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where


def test_the_gateways_role_grants_exactly_the_launchers_calls(rendered):
    """The Role = what the issue lists plus every call the launcher's source
    makes through the kubernetes client (method names map to resource + verb)."""
    source = LAUNCHER.read_text()
    calls = {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)
             and re.fullmatch(r"(create|read|list|delete|patch|replace)_namespaced_\w+", node.attr)}
    assert calls, "the launcher makes no kubernetes client calls?"
    used = set()
    for call in calls:
        m = re.fullmatch(r"(\w+?)_namespaced_(job|pod)(_status|_log)?", call)
        assert m, f"unmapped client call {call}: extend the map and the Role"
        verb, kind, sub = m.groups()
        group, resource = CLIENT_GROUPS[kind]
        used.add((group, resource + (sub.replace("_", "/") if sub else ""), CLIENT_VERBS[verb]))
    for overlay in OVERLAYS:
        roles = objects(rendered, overlay, "Role")
        assert set(roles) == {"incept-launcher"}
        granted = {(g, r, v) for rule in roles["incept-launcher"]["rules"]
                   for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
        assert granted == ISSUE_GRANTS | used
        assert not any(rule.get("resourceNames") == [] for rule in roles["incept-launcher"]["rules"])
        binding = objects(rendered, overlay, "RoleBinding")["incept-gateway-launcher"]
        assert binding["roleRef"]["name"] == "incept-launcher"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "incept-gateway",
                                        "namespace": "incept"}]
        kinds = {o["kind"] for o in rendered[overlay]}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_gets_an_api_token(rendered, templates, overlay):
    accounts = objects(rendered, overlay, "ServiceAccount")
    for name, sa in accounts.items():
        assert sa.get("automountServiceAccountToken") is (name == "incept-gateway"), name
    for where, spec in all_pod_specs(rendered, templates, overlay):
        assert spec["serviceAccountName"] in accounts, where
        expected = spec["serviceAccountName"] == "incept-gateway"
        assert spec.get("automountServiceAccountToken", False) is expected, where


def test_gpu_only_in_the_gpu_overlay(templates):
    for name, template in templates["gpu"].items():
        spec = template["spec"]["template"]["spec"]
        trainer = spec["containers"][0]
        assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "1", name
        assert trainer["resources"]["requests"]["nvidia.com/gpu"] == "1", name
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"], name
    dev = templates["dev"]["job-template.yaml"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(dev)
    # Besides GPU scheduling, sizes and pull policy, the dev template is the base one.
    def core(template):
        t = copy.deepcopy(template)
        t["metadata"].pop("annotations", None)
        pod = t["spec"]["template"]["spec"]
        pod.pop("nodeSelector", None)
        pod.pop("tolerations", None)
        for c in pod["containers"]:
            c.pop("resources"), c.pop("imagePullPolicy")
        return t
    assert core(templates["dev"]["job-template.yaml"]) == core(templates["gpu"]["job-template.yaml"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_template_honours_the_launcher_contract(templates, overlay):
    for name, template in templates[overlay].items():
        assert (template["apiVersion"], template["kind"]) == ("batch/v1", "Job"), name
        pod = template["spec"]["template"]
        assert [c["name"] for c in pod["spec"]["containers"]] == ["trainer"], name
        assert pod["spec"]["containers"][0]["command"] == ["incept"], name
        for labels in (template["metadata"]["labels"], pod["metadata"]["labels"]):
            assert labels["app.kubernetes.io/name"] == "incept-trainer", name
            assert labels["app.kubernetes.io/part-of"] == "incept", name
        # Room for the SIGTERM checkpoint, and retries that resume from it.
        assert pod["spec"]["terminationGracePeriodSeconds"] >= 120, name
        assert template["spec"]["backoffLimit"] >= 1, name
        assert pod["spec"]["restartPolicy"] == "Never", name
        assert pod["spec"]["containers"][0]["image"] == Settings.model_fields["trainer_image"].default


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of env values."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)


def test_multinode_template_gives_the_trainer_its_cluster(rendered, templates):
    """Filled in by the launcher, run through Kubernetes' env expansion, read by the
    trainer's own incept.training.distribute: one worker per completion, each a
    stable name behind the headless Service."""
    from incept.training.distribute import tf_config_from_indexed_job

    for overlay in OVERLAYS:
        job = build_job(templates[overlay]["job-template-multinode.yaml"], "flowers-1")
        spec = job["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["completions"] == spec["parallelism"] >= 2
        pod = spec["template"]
        service = objects(rendered, overlay, "Service")[pod["spec"]["subdomain"]]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
        job_name = job["metadata"]["name"]
        # What the job-name label's fieldRef and the Redis Secret resolve to.
        env = {"JOB_NAME": job_name, "REDIS_PASSWORD": "0123abcd"}
        container_env = pod["spec"]["containers"][0]["env"]
        assert next(e for e in container_env if e["name"] == "JOB_NAME")["valueFrom"]["fieldRef"][
            "fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
        for e in container_env:
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
        port = int(env["INCEPT_WORKER_PORT"])
        assert port in [p["port"] for p in service["spec"]["ports"]]
        subdomain = pod["spec"]["subdomain"]
        for index in range(spec["completions"]):
            tf_config = tf_config_from_indexed_job(env["INCEPT_WORKER_HOSTS"], port, str(index))
            assert tf_config == {
                "cluster": {"worker": [f"{job_name}-{i}.{subdomain}:{port}"
                                       for i in range(spec["completions"])]},
                "task": {"type": "worker", "index": index}}


def test_tfserving_is_the_stock_image_of_the_locked_tensorflow(rendered, compose, lock):
    tf = lock["tensorflow-cpu"]
    assert lock["tensorflow-serving-api"] == tf
    expected = f"tensorflow/serving:{tf}"
    assert default_image(compose["services"]["tfserving"]["image"]) == expected
    for overlay in OVERLAYS:
        pod = objects(rendered, overlay, "Deployment")["tfserving"]["spec"]["template"]["spec"]
        containers = {c["name"]: c for c in pod["containers"]}
        assert containers["tfserving"]["image"] == expected
        assert "--model_config_file=/data/serving/models.config" in containers["tfserving"]["args"]
        # Ready = every configured model has an AVAILABLE version (the sidecar asks TF Serving).
        sidecar = containers["models-config"]
        assert sidecar["readinessProbe"]["exec"]["command"] == [
            "incept-tfserving-config", "ready", "--rest", "http://127.0.0.1:8501"]
        assert {c["command"][-1] for c in pod["initContainers"]} == {"write"}
    constraints = (REPO / "docker/cuda-constraints.txt").read_text()
    assert f"tensorflow=={tf}\n" in constraints
    assert f'"tensorflow[and-cuda]=={tf}"' in (REPO / "docker/trainer.Dockerfile").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_mounts_the_shared_volume_at_one_path(rendered, templates, overlay):
    claims = objects(rendered, overlay, "PersistentVolumeClaim")
    assert set(claims) == {"incept-data"}
    mounted_by = set()
    for where, spec in all_pod_specs(rendered, templates, overlay):
        shared = {v["name"] for v in spec.get("volumes", [])
                  if v.get("persistentVolumeClaim", {}).get("claimName") == "incept-data"}
        for c in spec.get("initContainers", []) + spec["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] in shared:
                    assert m["mountPath"] == "/data", (where, c["name"])
                    mounted_by.add(where)
                else:
                    assert m["mountPath"] != "/data" or where.startswith("StatefulSet/redis"), where
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "INCEPT_DATA_ROOT" in env:
                assert env["INCEPT_DATA_ROOT"] == "/data", where
    assert {"Deployment/gateway", "Deployment/evaluator", "Deployment/converter", "Deployment/tfserving",
            "template/job-template.yaml", "template/job-template-multinode.yaml"} <= mounted_by
    if overlay == "gpu":
        assert claims["incept-data"]["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_is_what_settings_accepts(rendered, templates, overlay, monkeypatch):
    fields = {f"INCEPT_{name.upper()}" for name in Settings.model_fields}
    for where, spec in all_pod_specs(rendered, templates, overlay):
        for c in spec["containers"]:
            env = [e for e in c.get("env", []) if e["name"].startswith("INCEPT_")]
            assert {e["name"] for e in env} <= fields, where
            for e in env:
                value = e.get("value", "incept" if "valueFrom" in e else None)
                monkeypatch.setenv(e["name"], value)
            Settings(_env_file=None)  # every value parses and type-checks
            for e in env:
                monkeypatch.delenv(e["name"])


def test_gateway_finds_its_template_tokens_and_backends(rendered):
    for overlay in OVERLAYS:
        deployment = objects(rendered, overlay, "Deployment")["gateway"]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        # The template file is a key of the mounted (generated) ConfigMap.
        template_path = env["INCEPT_K8S_JOB_TEMPLATE"]["value"]
        folder, key = template_path.rsplit("/", 1)
        config_map = volumes[mounts[folder]]["configMap"]["name"]
        assert key in objects(rendered, overlay, "ConfigMap")[config_map]["data"]
        # Tokens: a file from a Secret volume; the Secret is never rendered from the repo.
        folder, key = env["INCEPT_API_TOKENS_FILE"]["value"].rsplit("/", 1)
        assert "secret" in volumes[mounts[folder]]
        assert "INCEPT_API_TOKENS" not in env
        assert not objects(rendered, overlay, "Secret")
        for cm in objects(rendered, overlay, "ConfigMap").values():
            assert not any(re.search(r"(?i)token|password|secret", k) for k in cm["data"])
        assert env["INCEPT_LAUNCHER"]["value"] == "kubernetes"
        # Redis's password: from the Secret incept-redis, expanded into the URL.
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "incept-redis", "key": "password"}
        assert env["INCEPT_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
        assert env["INCEPT_TFSERVING_GRPC"]["value"] == "tfserving:8500"
        services = objects(rendered, overlay, "Service")
        assert {p["port"] for p in services["tfserving"]["spec"]["ports"]} == {8500, 8501}
        assert {p["port"] for p in services["redis"]["spec"]["ports"]} == {6379}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == int(env["INCEPT_PORT"]["value"])
        ingress = objects(rendered, overlay, "Ingress")["gateway"]
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend == {"name": "gateway", "port": {"name": "http"}}
        hpa = objects(rendered, overlay, "HorizontalPodAutoscaler")["gateway"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway"


# --- NetworkPolicies, evaluated as the cluster would for pods in this namespace.

def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are modelled here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def ingress_allowed(policies, target: dict, source: dict, port: int) -> bool:
    """Whether a pod labelled `source` (same namespace) may connect to `target` on `port`."""
    applicable = [p for p in policies if selects(p["spec"]["podSelector"], target)
                  and "Ingress" in p["spec"]["policyTypes"]]
    assert applicable, "every pod is under a policy (default deny)"
    for policy in applicable:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            ports = rule.get("ports")
            peer_ok = peers is None or any(
                "podSelector" in p and "namespaceSelector" not in p and selects(p["podSelector"], source)
                for p in peers)
            port_ok = ports is None or any(p["port"] == port for p in ports)
            if peer_ok and port_ok:
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_isolate_redis_and_tfserving(rendered, templates,
                                                                         overlay):
    policies = list(objects(rendered, overlay, "NetworkPolicy").values())
    deny = objects(rendered, overlay, "NetworkPolicy")["default-deny-all"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    pods = {name: t["metadata"]["labels"] for name, t in all_pod_templates(rendered, templates, overlay)}
    stranger = {"app.kubernetes.io/name": "something-else"}
    redis, tfserving = pods["redis"], pods["tfserving"]
    # Redis: every project pod that talks to it, nobody else.
    for name in ("gateway", "evaluator", "converter", "job-template.yaml",
                 "job-template-multinode.yaml"):
        assert ingress_allowed(policies, redis, pods[name], 6379), name
    assert not ingress_allowed(policies, redis, stranger, 6379)
    # TF Serving: only the gateway.
    for port in (8500, 8501):
        allowed = {name for name, labels in pods.items()
                   if ingress_allowed(policies, tfserving, labels, port)}
        assert allowed == {"gateway"}, port
        assert not ingress_allowed(policies, tfserving, stranger, port)
    # Nothing else is open to strangers but the gateway's HTTP port.
    for name, labels in pods.items():
        for port in (6379, 8500, 8501, 2222, 8000):
            if ingress_allowed(policies, labels, stranger, port):
                assert (name, port) == ("gateway", 8000), (name, port)
