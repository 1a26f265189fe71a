"""Run the Kubernetes dev overlay's workloads as podman containers, as a kubelet
would run their pods (no cluster can run here): every container with exactly
its manifest's command, args, env (ConfigMaps and Secrets resolved), volume
mounts, user, group, read-only root, dropped capabilities and limits; the
containers of one pod share its network namespace; each pod is on one network
where the names of the Services selecting it resolve (every Service here has
port == targetPort, checked). The PersistentVolumeClaims are podman volumes
given the pod's fsGroup as the kubelet does; emptyDirs are tmpfs. Probes run
as the kubelet runs them: exec inside the container, httpGet and tcpSocket
against the pod's address. What stays static: scheduling, RBAC enforcement,
NetworkPolicies, GPUs, restarts."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from podman_support import IMAGES, podman

# The images of the rendered manifests -> the ones `make images` builds (what a
# `kustomize edit set image` would do for a cluster that cannot pull either).
IMAGE_OVERRIDES = {
    "redis:7.4.2-alpine": "localhost/incept-redis:7.0",
    "tensorflow/serving:2.21.0": IMAGES["tfserving"],
}


INIT_IMAGE = "localhost/incept-redis:7.0"  # any small local image


def local_image(image: str) -> str:
    return IMAGE_OVERRIDES.get(image) or (image if "/" in image else f"localhost/{image}")


def quantity(value: str) -> str:
    """A Kubernetes memory quantity as podman's --memory takes it."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(value))
    assert m, value
    return m.group(1) + {"Ki": "k", "Mi": "m", "Gi": "g", None: ""}[m.group(2)]


@dataclass
class Pod:
    name: str
    template: dict
    aliases: list[str]
    containers: list[str] = field(default_factory=list)

    @property
    def spec(self) -> dict:
        return self.template["spec"]

    @property
    def infra(self) -> str:
        return self.containers[0]


class Cluster:
    """The pods of one rendered overlay on a podman network `prefix`."""

    def __init__(self, prefix: str, objects: list[dict], workdir: Path, *, namespace: str = "incept",
                 secrets: dict[str, dict[str, str]], extra_env: dict[str, dict[str, str]] | None = None,
                 extra_args: dict[str, list[str]] | None = None):
        self.prefix, self.objects, self.workdir, self.namespace = prefix, objects, workdir, namespace
        self.secrets = secrets
        self.extra_env = extra_env or {}  # container name -> env added to the manifest's
        self.extra_args = extra_args or {}  # container name -> podman options (extra mounts)
        self.config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
        self.services = [o for o in objects if o["kind"] == "Service"]
        self.pods: dict[str, Pod] = {}
        self.volumes: set[str] = set()

    # --- set-up --------------------------------------------------------------------

    def create_network(self) -> str:
        podman("network", "create", self.prefix)
        inspect = json.loads(podman("network", "inspect", self.prefix).stdout)[0]
        return inspect["subnets"][0]["gateway"]  # the host, as the pods see it

    def aliases_for(self, labels: dict) -> list[str]:
        out = []
        for svc in self.services:
            selector = svc["spec"].get("selector") or {}
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                for port in svc["spec"]["ports"]:
                    target = port.get("targetPort", port["port"])
                    assert isinstance(target, str) or target == port["port"], svc
                out.append(svc["metadata"]["name"])
        return out

    def workloads(self) -> list[tuple[str, dict]]:
        return [(o["metadata"]["name"], o["spec"]["template"]) for o in self.objects
                if o["kind"] in ("Deployment", "StatefulSet")]

    def _volume(self, claim: str, fs_group: int | None) -> str:
        name = f"{self.prefix}-{claim}"
        if name not in self.volumes:
            podman("volume", "create", name)
            self.volumes.add(name)
            # podman gives a new volume the owner of the image's folder at its first mount
            # point; mount it once where no image has a folder, so the fsGroup below stays.
            podman("run", "--rm", "--user", "0:0", "--volume", f"{name}:/incept-claim:nocopy",
                   INIT_IMAGE, "true")
        if fs_group is not None:  # the kubelet's fsGroup: group-owned, setgid, group-writable
            path = json.loads(podman("volume", "inspect", name).stdout)[0]["Mountpoint"]
            subprocess.run(["chgrp", "-R", str(fs_group), path], check=True)  # root, like the kubelet
            subprocess.run(["chmod", "-R", "g+rwXs", path], check=True)
        return name

    def _files(self, kind: str, name: str, data: dict[str, str]) -> Path:
        folder = self.workdir / kind / name
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            (folder / key).write_text(value)
            (folder / key).chmod(0o644)
        folder.chmod(0o755)
        return folder

    def mounts(self, pod: Pod, container: dict) -> list[str]:
        fs_group = pod.spec.get("securityContext", {}).get("fsGroup")
        claims = {t["metadata"]["name"]: t for t in pod.template.get("_claims", [])}
        args = []
        for mount in container.get("volumeMounts", []):
            volume = next(v for v in pod.spec.get("volumes", []) + [{"name": n, "claim": n} for n in claims]
                          if v["name"] == mount["name"])
            ro = ",ro" if mount.get("readOnly") else ""
            target = mount["mountPath"]
            if "persistentVolumeClaim" in volume or "claim" in volume:
                claim = volume.get("claim") or volume["persistentVolumeClaim"]["claimName"]
                # nocopy: a claim starts empty (no copy of the image's folder, as on Kubernetes).
                args += ["--volume", f"{self._volume(claim, fs_group)}:{target}:nocopy{ro}"]
            elif "emptyDir" in volume:
                args += ["--mount", f"type=tmpfs,destination={target},tmpfs-mode=1777"]
            elif "configMap" in volume:
                data = self.config_maps[volume["configMap"]["name"]]["data"]
                folder = self._files("configmaps", volume["configMap"]["name"], data)
                args += ["--mount", f"type=bind,source={folder},destination={target},ro"]
            elif "secret" in volume:
                folder = self._files("secrets", volume["secret"]["secretName"],
                                     self.secrets[volume["secret"]["secretName"]])
                args += ["--mount", f"type=bind,source={folder},destination={target},ro"]
            else:
                raise AssertionError(f"volume kind not modelled: {volume}")
        return args

    def env(self, pod: Pod, container: dict) -> list[str]:
        return [a for k, v in self.env_values(pod, container).items() for a in ("--env", f"{k}={v}")]

    def argv(self, pod: Pod, container: dict, key: str) -> list[str]:
        """command or args with $(VAR) expanded from the container's env, as Kubernetes does."""
        values = self.env_values(pod, container)
        return [re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), m.group(0)), a)
                for a in container.get(key, [])]

    def env_values(self, pod: Pod, container: dict) -> dict[str, str]:
        values: dict[str, str] = {}
        for e in container.get("env", []):
            if "value" in e:
                values[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), m.group(0)),
                                           str(e["value"]))
                continue
            ref = e["valueFrom"]
            if "fieldRef" in ref:
                path = ref["fieldRef"]["fieldPath"]
                labels = pod.template["metadata"].get("labels", {})
                m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
                values[e["name"]] = {"metadata.namespace": self.namespace,
                                     "metadata.name": pod.name}.get(path) or labels[m.group(1)]
            elif "configMapKeyRef" in ref:
                key = ref["configMapKeyRef"]
                values[e["name"]] = self.config_maps[key["name"]]["data"][key["key"]]
            elif "secretKeyRef" in ref:
                key = ref["secretKeyRef"]
                values[e["name"]] = self.secrets[key["name"]][key["key"]]
        values.update(self.extra_env.get(container["name"], {}))
        return values

    def options(self, pod: Pod, container: dict) -> list[str]:
        """podman run options for the container's securityContext, limits, command, env, mounts."""
        pod_sc = pod.spec.get("securityContext", {})
        sc = {**pod_sc, **container.get("securityContext", {})}
        args = ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}",
                "--label", f"incept.test/cluster={self.prefix}"]
        if pod_sc.get("fsGroup") is not None:
            args += ["--group-add", str(pod_sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for cap in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        limits = container.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", quantity(limits["memory"])]
        if "command" in container:
            args += ["--entrypoint", json.dumps(self.argv(pod, container, "command"))]
        args += self.env(pod, container) + self.mounts(pod, container)
        return args + self.extra_args.get(container["name"], [])

    def start_pod(self, name: str, template: dict, *, claims: list[dict] | None = None) -> Pod:
        pod = Pod(name, {**template, "_claims": claims or []}, self.aliases_for(
            template["metadata"].get("labels", {})))
        self.pods[name] = pod
        for init in pod.spec.get("initContainers", []):
            done = podman("run", "--rm", "--network", self.prefix, *self.options(pod, init),
                          local_image(init["image"]), *self.argv(pod, init, "args"), check=False,
                          timeout=600)
            assert done.returncode == 0, f"init container {init['name']}: {done.stderr[-2000:]}"
        for i, container in enumerate(pod.spec["containers"]):
            if i == 0:
                network = ["--network", self.prefix, "--hostname", name,
                           *(a for alias in pod.aliases for a in ("--network-alias", alias))]
            else:  # the pod's other containers share its network namespace
                network = ["--network", f"container:{pod.infra}"]
            container_name = f"{self.prefix}-{name}-{container['name']}"
            podman("run", "-d", "--name", container_name, *network, *self.options(pod, container),
                   local_image(container["image"]), *self.argv(pod, container, "args"))
            pod.containers.append(container_name)
        return pod

    # --- probes, as the kubelet runs them -----------------------------------------------

    def address(self, pod: Pod) -> str:
        inspect = json.loads(podman("inspect", pod.infra).stdout)[0]
        return inspect["NetworkSettings"]["Networks"][self.prefix]["IPAddress"]

    def probe(self, pod: Pod, container: dict, probe: dict) -> str | None:
        """None if the probe passes, else why not."""
        name = f"{self.prefix}-{pod.name}-{container['name']}"
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        timeout = probe.get("timeoutSeconds", 1)
        if "exec" in probe:
            done = podman("exec", name, *probe["exec"]["command"], check=False, timeout=timeout + 60)
            return None if done.returncode == 0 else f"exec: {done.stderr[-500:]}"
        kind = "httpGet" if "httpGet" in probe else "tcpSocket"
        port = probe[kind]["port"]
        port = ports.get(port, port)
        try:
            if kind == "httpGet":
                r = httpx.get(f"http://{self.address(pod)}:{port}{probe['httpGet']['path']}",
                              timeout=timeout + 5)
                return None if 200 <= r.status_code < 400 else f"httpGet: {r.status_code}"
            with socket.create_connection((self.address(pod), port), timeout=timeout + 5):
                return None
        except (OSError, httpx.HTTPError) as e:
            return f"{kind}: {e}"

    def probes(self, pod: Pod, kind: str) -> dict[str, str | None]:
        return {c["name"]: self.probe(pod, c, c[kind]) for c in pod.spec["containers"] if kind in c}

    # --- clean-up ----------------------------------------------------------------------

    def logs(self) -> str:
        out = []
        for pod in self.pods.values():
            for name in pod.containers:
                tail = podman("logs", "--tail", "20", name, check=False)
                out.append(f"--- {name}:\n{tail.stdout[-2000:]}{tail.stderr[-2000:]}")
        return "\n".join(out)

    def remove(self) -> None:
        listed = podman("ps", "-aq", "--filter", f"label=incept.test/cluster={self.prefix}",
                        check=False).stdout.split()
        if listed:
            podman("rm", "-f", "-t", "10", *listed, check=False, timeout=600)
        for volume in self.volumes:
            podman("volume", "rm", "-f", volume, check=False)
        podman("network", "rm", "-f", self.prefix, check=False)
