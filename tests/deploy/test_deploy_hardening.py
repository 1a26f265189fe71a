"""What a compromised or flooded gateway can do on Kubernetes, and what Redis
can lose, checked on the rendered overlays, the cluster-scoped admission policy
(k8s/cluster) and the compose file: the namespace quota and limit range hold the
whole system, trainer Jobs end and are cleaned up, the admission policy's CEL
rules (evaluated with cel-python, the language's reference semantics) admit the
Jobs the launcher builds and refuse any other image, NetworkPolicies let the
gateway talk only to the ingress controller and the API server and the trainer
to nothing external, the Ingress is TLS with nginx sized to the upload limit,
and Redis has a password from a Secret and never evicts a key."""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import subprocess

import celpy
import kubernetes_validate
import pytest
import yaml
from deploy_support import OVERLAYS, REPO, env_example, kubectl, pod_specs
from kubernetes_validate.utils import latest_version

from incept.errors import UserError
from incept.settings import Settings
from services.gateway.launchers.kubernetes import build_job

GATEWAY_SA = "system:serviceaccount:incept:incept-gateway"
IMAGE = Settings.model_fields["trainer_image"].default
WEEK_S = 7 * 24 * 3600


def objects(rendered, overlay, kind) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in rendered[overlay] if o["kind"] == kind}


def render(path: str, *extra: str) -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", *extra, str(REPO / path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def cluster() -> list[dict]:
    return render("k8s/cluster")


# --- quantities -------------------------------------------------------------------------

_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * _UNITS[unit]


def _pod_usage(pod: dict, field: str) -> dict[str, float]:
    """A pod's effective requests or limits: sum over containers, max with each init container."""
    total: dict[str, float] = {}
    for c in pod["containers"]:
        for k, v in c.get("resources", {}).get(field, {}).items():
            total[k] = total.get(k, 0) + quantity(v)
    for c in pod.get("initContainers", []):
        for k, v in c.get("resources", {}).get(field, {}).items():
            total[k] = max(total.get(k, 0), quantity(v))
    return total


def _replicas(rendered, overlay, o) -> int:
    hpas = [h for h in objects(rendered, overlay, "HorizontalPodAutoscaler").values()
            if h["spec"]["scaleTargetRef"]["name"] == o["metadata"]["name"]]
    return max([o["spec"].get("replicas", 1)] + [h["spec"]["maxReplicas"] for h in hpas])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_quota_holds_the_system_at_full_scale_plus_trainer_jobs(rendered, templates, overlay):
    quota = objects(rendered, overlay, "ResourceQuota")["incept"]["spec"]["hard"]
    used = {"requests": {}, "limits": {}}
    pods = 0
    for o in rendered[overlay]:
        if o["kind"] in ("Deployment", "StatefulSet"):
            n = _replicas(rendered, overlay, o)
            pods += n
            for field in used:
                for k, v in _pod_usage(o["spec"]["template"]["spec"], field).items():
                    used[field][k] = used[field].get(k, 0) + n * v
    # On top of the services: the biggest trainer Job (every worker of a multi-node one).
    job = max((build_job(t, "flowers-1") for t in templates[overlay].values()),
              key=lambda j: j["spec"].get("parallelism", 1))
    workers = job["spec"].get("parallelism", 1)
    for field in used:
        for k, v in _pod_usage(job["spec"]["template"]["spec"], field).items():
            used[field][k] = used[field].get(k, 0) + workers * v
    for field in used:
        for resource in ("cpu", "memory"):
            assert used[field][resource] <= quantity(quota[f"{field}.{resource}"]), (field, resource)
    assert pods + workers <= int(quota["pods"])
    gpus = used["requests"].get("nvidia.com/gpu", 0)
    assert gpus <= quantity(quota["requests.nvidia.com/gpu"])
    assert int(quota["count/jobs.batch"]) <= 50  # a bounded number of Jobs at once


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_fits_the_limit_range(rendered, templates, overlay):
    (limit_range,) = objects(rendered, overlay, "LimitRange").values()
    (container_limits,) = [x for x in limit_range["spec"]["limits"] if x["type"] == "Container"]
    assert set(container_limits["default"]) == set(container_limits["defaultRequest"]) == {"cpu", "memory"}
    specs = pod_specs(rendered[overlay]) + [
        (name, build_job(t, "flowers-1")["spec"]["template"]["spec"]) for name, t in templates[overlay].items()]
    for name, pod in specs:
        for c in pod["containers"] + pod.get("initContainers", []):
            for k, v in container_limits["max"].items():
                assert quantity(c["resources"]["limits"][k]) <= quantity(v), (name, c["name"], k)


# --- trainer Jobs and the admission policy ---------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_jobs_end_and_are_cleaned_up(templates, overlay):
    for name, template in templates[overlay].items():
        for source in (template, {**template, "spec": {k: v for k, v in template["spec"].items()
                                                       if k not in ("activeDeadlineSeconds",
                                                                    "ttlSecondsAfterFinished")}}):
            spec = build_job(source, "flowers-1", image="registry.example/incept-trainer:2")["spec"]
            assert 0 < spec["activeDeadlineSeconds"] <= WEEK_S, name
            assert 0 < spec["ttlSecondsAfterFinished"] <= WEEK_S, name


def test_the_launcher_runs_only_the_configured_image(templates):
    template = copy.deepcopy(templates["dev"]["job-template.yaml"])
    pod = template["spec"]["template"]["spec"]
    pod["initContainers"] = [{"name": "fetch", "image": "attacker/miner:latest"}]
    with pytest.raises(UserError, match="runs 'attacker/miner:latest', not the trainer image"):
        build_job(template, "flowers-1", image=IMAGE)
    pod["initContainers"][0]["image"] = IMAGE
    assert build_job(template, "flowers-1", image=IMAGE)["spec"]["template"]["spec"][
        "initContainers"][0]["image"] == IMAGE


@pytest.mark.parametrize("version", ("1.32.0", latest_version()))
def test_the_admission_policy_passes_strict_validation(cluster, version):
    assert {o["kind"] for o in cluster} == {"ValidatingAdmissionPolicy",
                                            "ValidatingAdmissionPolicyBinding"}
    for o in cluster:
        assert "namespace" not in o["metadata"]  # cluster-scoped
        kubernetes_validate.validate(o, version, strict=True)


def _admit(policy: dict, params: dict, job: dict, username: str = GATEWAY_SA) -> list[str]:
    """The API server's evaluation of the policy for a CREATE of ``job``:
    [] when it is admitted (or not matched), else the failing rules' messages."""
    env = celpy.Environment()

    def evaluate(expr: str, activation: dict):
        return env.program(env.compile(expr)).evaluate(activation)

    activation = {"object": celpy.json_to_cel(job), "params": celpy.json_to_cel(params),
                  "request": celpy.json_to_cel({"operation": "CREATE",
                                                "userInfo": {"username": username}})}
    spec = policy["spec"]
    if not all(evaluate(c["expression"], activation) for c in spec.get("matchConditions", [])):
        return []
    variables: dict = {}
    for var in spec.get("variables", []):
        activation["variables"] = celpy.json_to_cel(variables)
        variables[var["name"]] = _to_json(evaluate(var["expression"], activation))
    activation["variables"] = celpy.json_to_cel(variables)
    return [v.get("message") or v["messageExpression"] for v in spec["validations"]
            if not evaluate(v["expression"], activation)]


def _to_json(value):
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, bool | celpy.celtypes.BoolType):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    return value


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_admission_policy_admits_launched_jobs_and_refuses_any_other_image(
        rendered, templates, cluster, overlay):
    policy = next(o for o in cluster if o["kind"] == "ValidatingAdmissionPolicy")
    binding = next(o for o in cluster if o["kind"] == "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["paramRef"]["parameterNotFoundAction"] == "Deny"
    params = objects(rendered, overlay, "ConfigMap")[binding["spec"]["paramRef"]["name"]]
    assert params["metadata"]["namespace"] == binding["spec"]["paramRef"]["namespace"]
    assert params["data"]["image"] == IMAGE
    # The gateway launches with exactly that image: its INCEPT_TRAINER_IMAGE is that key.
    gateway = objects(rendered, overlay, "Deployment")["gateway"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in gateway["containers"][0]["env"]}
    assert env["INCEPT_TRAINER_IMAGE"]["valueFrom"]["configMapKeyRef"] == {
        "name": params["metadata"]["name"], "key": "image"}
    assert gateway["serviceAccountName"] == GATEWAY_SA.rsplit(":", 1)[1]

    for name, template in templates[overlay].items():
        job = build_job(template, "flowers-1", image=IMAGE)
        assert _admit(policy, params, job) == [], name
    job = build_job(templates[overlay]["job-template.yaml"], "flowers-1", image=IMAGE)
    pod = job["spec"]["template"]["spec"]
    hostile = {
        "another image": lambda j, p: p["containers"][0].update(image="attacker/miner:1"),
        "an extra init container": lambda j, p: p.update(
            initContainers=[{"name": "x", "image": "busybox"}]),
        "another service account": lambda j, p: p.update(serviceAccountName="incept-gateway"),
        "the token mounted": lambda j, p: p.update(automountServiceAccountToken=True),
        "no deadline": lambda j, p: j["spec"].pop("activeDeadlineSeconds"),
        "a year's deadline": lambda j, p: j["spec"].update(activeDeadlineSeconds=365 * 86400),
        "a host path": lambda j, p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "the host network": lambda j, p: p.update(hostNetwork=True),
    }
    for what, change in hostile.items():
        bad = copy.deepcopy(job)
        change(bad, bad["spec"]["template"]["spec"])
        assert _admit(policy, params, bad), what
    # Not the gateway (a cluster admin, another controller): the policy does not apply.
    pod["containers"][0]["image"] = "attacker/miner:1"
    assert _admit(policy, params, job, username="kubernetes-admin") == []


# --- NetworkPolicies: ingress from namespaces, egress to pods and addresses ------------------


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are modelled here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: dict, dest: dict) -> bool:
    """``dest``: {"ip": ...} (outside the cluster's pods) or {"labels", "namespace"}."""
    if "ipBlock" in peer:
        if "ip" not in dest:
            return False
        ip = ipaddress.ip_address(dest["ip"])
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if "ip" in dest:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": dest["namespace"]}
        ns_ok = _selects(peer["namespaceSelector"], ns_labels)
    else:
        ns_ok = dest["namespace"] == "incept"
    return ns_ok and _selects(peer.get("podSelector", {}), dest.get("labels", {}))


def allowed(policies, pod: dict, other: dict, port: int, direction: str) -> bool:
    """Whether traffic between ``pod`` (labels, in incept) and ``other`` on ``port``
    is allowed by the policies that select ``pod`` in ``direction``."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    applicable = [p for p in policies if _selects(p["spec"]["podSelector"], pod)
                  and direction in p["spec"]["policyTypes"]]
    assert applicable, "every pod is under a policy (default deny)"
    for policy in applicable:
        for rule in policy["spec"].get(key, []):
            peers, ports = rule.get(peers_key), rule.get("ports")
            if (peers is None or any(_peer_matches(p, other) for p in peers)) and (
                    ports is None or any(p["port"] == port for p in ports)):
                return True
    return False


def _pods(rendered, templates, overlay) -> dict[str, dict]:
    pods = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
            for o in rendered[overlay] if o["kind"] in ("Deployment", "StatefulSet")}
    for name, t in templates[overlay].items():
        pods[name] = build_job(t, "flowers-1")["spec"]["template"]["metadata"]["labels"]
    return pods


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_port_is_open_only_to_the_ingress_controller(rendered, templates, overlay):
    policies = list(objects(rendered, overlay, "NetworkPolicy").values())
    gateway = _pods(rendered, templates, overlay)["gateway"]
    controller = {"labels": {"app.kubernetes.io/name": "ingress-nginx"}, "namespace": "ingress-nginx"}
    assert allowed(policies, gateway, controller, 8000, "Ingress")
    for stranger in ({"labels": {}, "namespace": "incept"}, {"labels": {}, "namespace": "default"},
                     {"labels": {"app.kubernetes.io/name": "ingress-nginx"}, "namespace": "other"},
                     {"ip": "203.0.113.7"}):
        assert not allowed(policies, gateway, stranger, 8000, "Ingress"), stranger


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_egress_gateway_only_to_the_api_server_and_trainer_nothing_external(rendered, templates,
                                                                            overlay):
    policies = list(objects(rendered, overlay, "NetworkPolicy").values())
    pods = _pods(rendered, templates, overlay)
    internet = [{"ip": ip} for ip in ("1.1.1.1", "142.250.0.1", "203.0.113.7")]
    for name, labels in pods.items():
        for dest in internet:
            for port in (443, 80, 6443, 22):
                assert not allowed(policies, labels, dest, port, "Egress"), (name, dest, port)
    gateway = pods["gateway"]
    api_blocks = [peer["ipBlock"]["cidr"] for p in policies if p["metadata"]["name"] == "gateway-to-apiserver"
                  for rule in p["spec"]["egress"] for peer in rule["to"]]
    assert api_blocks and all(ipaddress.ip_network(c).is_private or
                              ipaddress.ip_network(c).subnet_of(ipaddress.ip_network("192.0.2.0/24"))
                              for c in api_blocks), api_blocks
    block = ipaddress.ip_network(api_blocks[0])
    api_server = {"ip": str(block[min(1, block.num_addresses - 1)])}
    assert allowed(policies, gateway, api_server, 6443, "Egress")
    assert not allowed(policies, pods["job-template.yaml"], api_server, 6443, "Egress")
    # What each pod does reach: Redis (password-protected) and DNS; the gateway TF Serving.
    redis = {"labels": pods["redis"], "namespace": "incept"}
    dns = {"labels": {"k8s-app": "kube-dns"}, "namespace": "kube-system"}
    tfserving = {"labels": pods["tfserving"], "namespace": "incept"}
    for name in ("gateway", "evaluator", "converter", "job-template.yaml"):
        assert allowed(policies, pods[name], redis, 6379, "Egress"), name
        assert allowed(policies, pods[name], dns, 53, "Egress"), name
    assert allowed(policies, gateway, tfserving, 8500, "Egress")
    assert not allowed(policies, pods["job-template.yaml"], tfserving, 8500, "Egress")


def test_trainer_downloads_are_an_opt_in_component(tmp_path):
    overlay = tmp_path / "with-downloads"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(REPO / "k8s/overlays/dev", overlay)],
        "components": [os.path.relpath(REPO / "k8s/components/trainer-downloads", overlay)]}))
    proc = subprocess.run([kubectl(), "kustomize", "--load-restrictor", "LoadRestrictionsNone",
                           str(overlay)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    trainer = {"app.kubernetes.io/name": "incept-trainer"}
    assert allowed(policies, trainer, {"ip": "151.101.0.223"}, 443, "Egress")
    assert not allowed(policies, {"app.kubernetes.io/name": "incept-gateway"},
                       {"ip": "151.101.0.223"}, 443, "Egress")
    for version in ("1.32.0", latest_version()):
        for d in policies:
            kubernetes_validate.validate(d, version, strict=True)


# --- Ingress -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_is_tls_and_nginx_takes_a_whole_upload(rendered, overlay):
    ingress = objects(rendered, overlay, "Ingress")["gateway"]
    hosts = {h for rule in ingress["spec"]["rules"] for h in [rule["host"]]}
    tls = ingress["spec"]["tls"]
    assert hosts <= {h for t in tls for h in t["hosts"]} and all(t["secretName"] for t in tls)
    assert not objects(rendered, overlay, "Secret")  # the certificate is made by hand (README)
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    body = re.fullmatch(r"(\d+)([kmg]?)", notes[prefix + "proxy-body-size"])
    size = int(body.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[body.group(2)]
    assert size >= Settings().max_upload_bytes
    assert notes[prefix + "proxy-request-buffering"] == "off"  # streamed, not spooled to disk
    assert notes[prefix + "ssl-redirect"] == "true"
    # A whole upload at 5 MB/s fits the timeouts.
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[prefix + key]) >= 600, key


# --- Redis ---------------------------------------------------------------------------------


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_has_a_password_from_a_secret_and_never_evicts(rendered, templates, overlay):
    redis = objects(rendered, overlay, "StatefulSet")["redis"]["spec"]["template"]["spec"]
    container = redis["containers"][0]
    args, env = container["args"], {e["name"]: e for e in container["env"]}
    assert _flag(args, "--requirepass") == "$(REDIS_PASSWORD)"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "incept-redis"
    assert _flag(args, "--maxmemory-policy") == "noeviction"
    assert quantity(_flag(args, "--maxmemory").replace("mb", "Mi")) <= 0.8 * quantity(
        container["resources"]["limits"]["memory"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert "grep -q PONG" in container[probe]["exec"]["command"][-1]  # NOAUTH exits 0
    specs = pod_specs(rendered[overlay]) + [
        (name, build_job(t, "flowers-1")["spec"]["template"]["spec"]) for name, t in templates[overlay].items()]
    clients = 0
    for name, pod in specs:
        for c in pod["containers"] + pod.get("initContainers", []):
            names = [e["name"] for e in c.get("env", [])]
            if "INCEPT_REDIS_URL" not in names:
                continue
            clients += 1
            url = next(e for e in c["env"] if e["name"] == "INCEPT_REDIS_URL")["value"]
            assert url.startswith("redis://:$(REDIS_PASSWORD)@"), (name, url)
            # Kubernetes expands $(VAR) only from variables defined earlier in the list.
            assert names.index("REDIS_PASSWORD") < names.index("INCEPT_REDIS_URL"), name
            secret = next(e for e in c["env"] if e["name"] == "REDIS_PASSWORD")
            assert secret["valueFrom"]["secretKeyRef"] == {"name": "incept-redis", "key": "password"}
    assert clients >= 4


def test_compose_redis_has_a_password_from_env_and_never_evicts(compose):
    redis = compose["services"]["redis"]
    args = redis["command"]
    assert _flag(args, "--requirepass").startswith("${REDIS_PASSWORD:?")
    assert _flag(args, "--maxmemory-policy") == "noeviction"
    assert _flag(args, "--maxmemory") == "768mb"
    assert quantity(redis["deploy"]["resources"]["limits"]["memory"].replace("g", "Gi")) >= 2**30
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    assert "grep -q PONG" in redis["healthcheck"]["test"][-1]
    assert "REDIS_PASSWORD" in env_example()
    urls = [svc.get("environment", {}).get("INCEPT_REDIS_URL")
            for svc in compose["services"].values()]
    urls = [u for u in urls if u]
    assert len(urls) >= 4 and all(u.startswith("redis://:${REDIS_PASSWORD:?") for u in urls)
