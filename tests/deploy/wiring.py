"""Each deployment form as the processes it runs, for the wiring test
(test_wiring.py): what every process runs (argv + environment), where it
listens, which rq queues it consumes and enqueues to, and which addresses it
reaches. Read from the same sources the deployments use: `Stack` for `incept
up`, docker-compose.yml (+ the CPU override) with the images' ENV for compose,
the kustomize-rendered objects (+ the trainer Jobs the gateway's launcher
builds) for Kubernetes."""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from deploy_support import REPO, env_example

from incept.queues import DATASETS_QUEUE, EVAL_QUEUE, TRAIN_QUEUE
from incept.settings import Settings

ANY_ADDRESS = {"0.0.0.0", "::", "*", ""}  # noqa: S104 (what a server binds to, not a choice here)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Commands whose process talks to Redis (rq workers, the trainer, the gateway, the supervisor).
REDIS_CLIENTS = {"gateway", "trainer", "converter", "evaluator", "train", "up"}


@dataclass
class Proc:
    """One process of a deployment: `where` names it, `group` is what shares its
    loopback (a pod, a compose service's container, the host for `incept up`)."""

    where: str
    argv: list[str]
    env: dict[str, str]
    group: str
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # k8s named container ports
    probes: list[str] = field(default_factory=list)  # addresses its health checks reach

    @property
    def command(self) -> str | None:
        return incept_command(self.argv)

    def settings(self) -> Settings:
        with mock.patch.dict(os.environ, self.env, clear=True):
            return Settings(_env_file=None)


# --- what a process is, from its command line ----------------------------------------


def incept_command(argv: list[str]) -> str | None:
    """The `incept` subcommand argv runs (`incept X`, `python -m incept.cli X`)."""
    for i, arg in enumerate(argv):
        if Path(arg).name == "incept" or (arg == "incept.cli" and i and argv[i - 1] == "-m"):
            rest = [a for a in argv[i + 1:] if not a.startswith("-")]
            return rest[0] if rest else None
    return None


def flag(argv: list[str], name: str) -> str | None:
    """`--name=value` or `--name value` (the last one wins, as in the servers here)."""
    found = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            found = arg.split("=", 1)[1]
        elif arg == name and i + 1 < len(argv):
            found = argv[i + 1]
    return found


def listens(proc: Proc) -> dict[int, str]:
    """port -> bind address of every server socket the process opens."""
    argv, program = proc.argv, Path(proc.argv[0]).name if proc.argv else ""
    if proc.command == "gateway":
        settings = proc.settings()
        return {settings.port: settings.host}
    if proc.command == "train" and proc.settings().worker_hosts:
        # A multi-node worker serves TensorFlow's collectives on the worker port.
        return {proc.settings().worker_port: "0.0.0.0"}  # noqa: S104
    if program in ("tensorflow_model_server", "incept-tfserving-standin"):
        ports = {int(flag(argv, "--port") or 8500): "0.0.0.0"}  # noqa: S104
        rest = int(flag(argv, "--rest_api_port") or 0)
        return ports | ({rest: "0.0.0.0"} if rest else {})  # noqa: S104
    if program == "redis-server":
        return {int(flag(argv, "--port") or 6379): flag(argv, "--bind") or "*"}
    if program == "tensorboard":
        host = "0.0.0.0" if "--bind_all" in argv else flag(argv, "--host") or "localhost"  # noqa: S104
        return {int(flag(argv, "--port") or 6006): host}
    return {}


def consumes(proc: Proc) -> set[str]:
    """The queues its worker listens on: the command module's own CONSUMES table."""
    from incept.cli import all_commands

    commands = all_commands()
    command = proc.command
    if command not in commands:
        return set()
    module = importlib.import_module(commands[command].module)
    return set(getattr(module, "CONSUMES", {}).get(command, ()))


# --- who enqueues: the producer modules, checked against the code by test_wiring ---

# module -> (commands whose process runs it, queue, when it is active)
PRODUCERS: dict[str, tuple[set[str], str, Callable[[Settings], bool]]] = {
    "services/gateway/service.py": ({"gateway"}, DATASETS_QUEUE, lambda s: True),
    "services/gateway/launchers/local.py": ({"gateway"}, TRAIN_QUEUE, lambda s: s.launcher == "local"),
    # A preempted rq training job queues its own resume request.
    "services/trainer/jobs.py": ({"trainer"}, TRAIN_QUEUE, lambda s: True),
    # Every checkpoint asks for an evaluation, from an rq job or `incept train`.
    "incept/training/redis_link.py": ({"trainer", "train"}, EVAL_QUEUE, lambda s: True),
    "services/evaluator/reconciler.py": ({"evaluator"}, EVAL_QUEUE, lambda s: True),
    # `incept up` queues interrupted jobs again before its trainer starts.
    "incept/stack/supervisor.py": ({"up"}, TRAIN_QUEUE, lambda s: True),
}


def produces(proc: Proc) -> set[str]:
    command = proc.command
    if command is None:
        return set()
    settings = proc.settings()
    return {queue for commands, queue, active in PRODUCERS.values()
            if command in commands and active(settings)}


def _queue_constants() -> dict[str, str]:
    import incept.queues as q

    return {name: getattr(q, name) for name in dir(q) if name.endswith("_QUEUE")}


def enqueuing_functions() -> dict[str, set[str]]:
    """incept/queues.py's functions that enqueue, with their queues (transitively)."""
    constants = _queue_constants()
    tree = ast.parse((REPO / "incept/queues.py").read_text())
    direct, calls = {}, {}
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
        enqueues = any(isinstance(n, ast.Attribute) and n.attr == "enqueue" for n in ast.walk(fn))
        direct[fn.name] = {constants[n] for n in names if n in constants} if enqueues else set()
        calls[fn.name] = names
    changed = True
    while changed:
        changed = False
        for name, names in calls.items():
            extra = set().union(*(direct[n] for n in names if n in direct)) - direct[name]
            if extra:
                direct[name] |= extra
                changed = True
    return {name: queues for name, queues in direct.items() if queues}


def enqueues_in(path: Path) -> set[str]:
    """Queues a module enqueues to: uses of incept.queues' enqueuing functions (called,
    or handed to a thread pool), or `Queue(X_QUEUE, ...).enqueue(...)` /
    `rq_queue(conn, X_QUEUE).enqueue(...)`."""
    functions, constants = enqueuing_functions(), _queue_constants()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        used = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
        if isinstance(node, (ast.Name, ast.Attribute)) and used in functions:
            found |= functions[used]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name == "enqueue" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call):
            # Queue(X_QUEUE, ...).enqueue or incept.queues.rq_queue(conn, X_QUEUE).enqueue
            args = [a for a in func.value.args if isinstance(a, ast.Name)]
            queue = next((a for a in args if a.id in constants), args[0] if args else None)
            if queue is not None:
                found.add(constants.get(queue.id, queue.id))
    return found


# --- addresses a process reaches -------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    """host and port of `redis://h:p/0`, `http://h:p`, `h:p`."""
    m = re.match(r"^(?:[a-z]+://)?(?:[^@/]*@)?\[?([^\]/:]+)\]?:(\d+)", address)
    assert m, f"no host:port in {address!r}"
    return m.group(1), int(m.group(2))


def reaches(proc: Proc) -> list[tuple[str, str]]:
    """(what, address) the process is configured to connect to."""
    command, out = proc.command, []
    if command is None:
        return [("health check", a) for a in proc.probes]
    settings = proc.settings()
    if command in REDIS_CLIENTS:
        out.append(("redis", settings.redis_url))
    if command == "gateway":
        if settings.predict_backend == "grpc" or "INCEPT_TFSERVING_GRPC" in proc.env:
            out.append(("TF Serving gRPC", settings.tfserving_grpc))
        if settings.predict_backend == "rest" or "INCEPT_TFSERVING_REST" in proc.env:
            out.append(("TF Serving REST", settings.tfserving_rest))
    if settings.gateway_url:
        out.append(("gateway", settings.gateway_url))
    return out + [("health check", a) for a in proc.probes]


def command_addresses(argv: list[str]) -> list[str]:
    """URLs and /dev/tcp/host/port targets in a health-check command."""
    text = " ".join(argv)
    urls = re.findall(r"https?://[^\s\"']+", text)
    tcp = [f"{h}:{p}" for h, p in re.findall(r"/dev/tcp/([^/\s]+)/(\d+)", text)]
    return urls + tcp


# --- images: ENV and default command from docker/*.Dockerfile -------------------------


def dockerfile_for(image: str) -> Path | None:
    m = re.match(r"^(?:[\w.-]+/)?incept-([\w-]+):", image)
    path = REPO / "docker" / f"{m.group(1)}.Dockerfile" if m else None
    return path if path and path.exists() else None


def image_env(image: str) -> dict[str, str]:
    """The final stage's ENV of an image built from this repository."""
    path = dockerfile_for(image)
    if path is None:
        return {}
    text = re.sub(r"\\\n", " ", path.read_text())
    final = text.split("\nFROM ")[-1]
    env = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, value = pair.split("=", 1)
                env[key] = value
    return env


# --- the deployment forms -------------------------------------------------------------


@dataclass
class Form:
    """A deployment's processes; `serving(host, port, client)` lists those that
    answer there for a client (None: from outside)."""

    name: str
    procs: list[Proc]
    serving: Callable[[str, int, Proc | None], list[Proc]]
    entries: list[tuple[str, str]]  # addresses users and peers reach from outside


def bound_to(proc: Proc, host: str, port: int, *, same_group: bool) -> bool:
    bind = listens(proc).get(port)
    if bind is None:
        return False
    if bind in ANY_ADDRESS:
        return True
    return same_group and (bind == host or (bind in LOOPBACK and host in LOOPBACK))


def local_form(data_root: Path) -> Form:
    """`incept up`: the processes `Stack` starts, on the host's loopback."""
    from incept.redis_server import RedisServer
    from incept.stack import Stack

    stack = Stack(Path(data_root), port=8000)
    stack.redis = RedisServer(stack.paths.redis_dir, port=6390, host=stack.host)
    procs = [Proc(f"incept up/{name}", child.argv, child.env, "host")
             for name in stack.services for child in [stack.make_child(name)]]
    procs.append(Proc("incept up/redis", stack.redis.command(), {}, "host"))
    procs.append(Proc("incept up/supervisor", ["incept", "up"], stack.env(), "host"))

    def serving(host, port, client):
        return [p for p in procs if bound_to(p, host, port, same_group=True)]

    return Form("local", procs, serving, [("the gateway (demo, page, CLI)", stack.url)])


INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def interpolate(value: object, env: dict[str, str]) -> str:
    return INTERPOLATION.sub(lambda m: env.get(m.group(1)) or m.group(2) or "", str(value))


def _as_list(value) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value or [])


def compose_form(compose: dict) -> Form:
    """docker compose: one container per service on one network, service names resolve."""
    dotenv, procs = env_example(), []
    for name, svc in compose["services"].items():
        env = image_env(interpolate(svc["image"], dotenv)) | {k: interpolate(v, dotenv)
                                         for k, v in (svc.get("environment") or {}).items()}
        argv = _as_list(svc.get("entrypoint")) + _as_list(svc.get("command"))
        test = svc.get("healthcheck", {}).get("test", [])
        procs.append(Proc(f"compose/{name}", [interpolate(a, dotenv) for a in argv], env, name,
                          probes=command_addresses(test)))

    def serving(host, port, client):
        if host in LOOPBACK:
            return [p for p in procs if client and p.group == client.group
                    and bound_to(p, host, port, same_group=True)]
        return [p for p in procs if p.group == host and bound_to(p, host, port, same_group=False)]

    entries = []
    for name, svc in compose["services"].items():
        for mapping in svc.get("ports", []):
            container_port = interpolate(mapping, dotenv).rsplit(":", 1)[-1]
            entries.append((f"published port {mapping} of {name}", f"{name}:{container_port}"))
    return Form("compose", procs, serving, entries)


def _k8s_env(container: dict, config_maps: dict[str, dict]) -> dict[str, str]:
    """A container's env as the kubelet gives it: values (with $(VAR) expanded),
    ConfigMap keys resolved; field and Secret references become placeholders."""
    env = image_env(container["image"])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)),
                                    str(e["value"]))
            continue
        ref = e.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[e["name"]] = config_maps[key["name"]]["data"][key["key"]]
        else:
            env[e["name"]] = "from-a-reference"
    return env


def _k8s_probes(container: dict) -> list[str]:
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    out = []
    for probe in (container.get(k) for k in ("readinessProbe", "livenessProbe", "startupProbe")):
        if not probe:
            continue
        for kind in ("httpGet", "tcpSocket", "grpc"):
            if kind in probe:
                port = probe[kind]["port"]
                port = named.get(port, port)
                out.append(f"http://127.0.0.1:{port}{probe[kind].get('path', '/')}"
                           if kind == "httpGet" else f"127.0.0.1:{port}")
        if "exec" in probe:
            out += command_addresses(probe["exec"]["command"])
    return out


def k8s_pods(objects: list[dict], templates: dict[str, dict]) -> list[tuple[str, dict]]:
    """(where, pod template) of every workload and of the Jobs the launcher builds."""
    from services.gateway.launchers.kubernetes import build_job

    pods = [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]) for o in objects
            if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    for name, template in templates.items():
        pods.append((f"launched Job ({name})", build_job(template, "flowers-1")["spec"]["template"]))
    return pods


def k8s_form(overlay: str, objects: list[dict], templates: dict[str, dict]) -> Form:
    """A Kubernetes overlay: pods share their loopback; Services route by selector."""
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    procs = []
    for where, pod in k8s_pods(objects, templates):
        spec = pod["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            argv = list(c.get("command", [])) + list(c.get("args", []))
            procs.append(Proc(f"k8s {overlay} {where}/{c['name']}", argv, _k8s_env(c, config_maps),
                              where, labels=pod["metadata"].get("labels", {}),
                              ports={p.get("name", str(p["containerPort"])): p["containerPort"]
                                     for p in c.get("ports", [])},
                              probes=_k8s_probes(c)))

    def serving(host, port, client):
        if host in LOOPBACK:
            return [p for p in procs if client and p.group == client.group
                    and bound_to(p, host, port, same_group=True)]
        service = services.get(host.split(".")[0])
        if service is None:
            return []
        selector = service["spec"].get("selector", {})
        out = []
        for sp in (sp for sp in service["spec"]["ports"] if sp["port"] == port):
            target = sp.get("targetPort", sp["port"])
            for p in procs:
                if selector and all(p.labels.get(k) == v for k, v in selector.items()):
                    container_port = p.ports.get(target) if isinstance(target, str) else (
                        target if target in p.ports.values() else None)
                    if container_port and bound_to(p, host, container_port, same_group=False):
                        out.append(p)
        return out

    entries = [(f"Service {name} port {sp['port']}", f"{name}:{sp['port']}")
               for name, s in services.items() for sp in s["spec"]["ports"]]
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                port = backend["port"].get("number") or next(
                    sp["port"] for sp in services[backend["name"]]["spec"]["ports"]
                    if sp.get("name") == backend["port"]["name"])
                entries.append((f"Ingress {ingress['metadata']['name']}", f"{backend['name']}:{port}"))
    return Form(f"k8s/{overlay}", procs, serving, entries)
