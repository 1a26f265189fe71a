"""What this process may use, and what a job spec asks for.

A container sees the host's cores in ``os.cpu_count()`` and the host's memory in
``/proc/meminfo``; what it may really use is its cgroup's CPU quota and memory
limit. Both are read from ``/sys/fs/cgroup`` (v2, else v1), walking up the
process's cgroup path because an ancestor's limit applies too, with the host's
numbers as the fallback. The job checks (``job_resource_problems``) run at
submit time in the gateway and again in the trainer against its own limits."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as a page-rounded 2**63 - 1.
_V1_UNLIMITED = 1 << 62

# A float32 RGB image in the input batch. The trainer holds at least three
# batches of them at once (the tf.data prefetch, the augmented copy, the model's
# input), so a batch needs at least this many bytes times three.
INPUT_BYTES_PER_PIXEL = 3 * 4
INPUT_BATCHES_HELD = 3
# One cached view of one image on the head-only path: Inception v4's pre_logits
# (1536) and aux pre_logits (768) as float16 -- the largest registered net's;
# the whole cache is loaded into memory.
FEATURE_BYTES_PER_VIEW = (1536 + 768) * 2
# Most optimizer steps a job may ask for, directly or through epochs.
MAX_STEPS = 10_000_000


@dataclass(frozen=True)
class Limits:
    cpus: float  # usable cores (a quota of 1.5 cores is 1.5)
    memory_bytes: int

    @property
    def threads(self) -> int:
        """Worker threads worth starting: the quota rounded up, at least one."""
        return max(1, math.ceil(self.cpus))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """controller -> path from /proc/self/cgroup ("" is the v2 unified hierarchy)."""
    out: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                out[controller] = parts[2]
    return out


def _ancestry(mount: Path, rel: str) -> list[Path]:
    """The cgroup folder and its ancestors up to the mount. Inside a container's
    cgroup namespace the path may not exist under the mount: the mount itself is
    then the container's cgroup."""
    here = mount / rel.lstrip("/")
    dirs = [here, *[p for p in here.parents if mount in p.parents or p == mount]]
    return [d for d in dirs if d.is_dir()] or [mount]


def _v2_limits(root: Path, rel: str) -> tuple[float | None, int | None]:
    cpus, memory = None, None
    for d in _ancestry(root, rel):
        quota = (_read(d / "cpu.max") or "max").split()
        if quota[0] != "max" and len(quota) == 2 and int(quota[1]) > 0:
            c = int(quota[0]) / int(quota[1])
            cpus = c if cpus is None else min(cpus, c)
        mem = _read(d / "memory.max")
        if mem and mem != "max":
            memory = int(mem) if memory is None else min(memory, int(mem))
    return cpus, memory


def _v1_limits(root: Path, paths: dict[str, str]) -> tuple[float | None, int | None]:
    cpus, memory = None, None
    cpu_mount = next((root / n for n in ("cpu,cpuacct", "cpu") if (root / n).is_dir()), None)
    if cpu_mount is not None:
        for d in _ancestry(cpu_mount, paths.get("cpu", "/")):
            quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            if quota and period and int(quota) > 0 and int(period) > 0:
                c = int(quota) / int(period)
                cpus = c if cpus is None else min(cpus, c)
    if (root / "memory").is_dir():
        for d in _ancestry(root / "memory", paths.get("memory", "/")):
            mem = _read(d / "memory.limit_in_bytes")
            if mem and int(mem) < _V1_UNLIMITED:
                memory = int(mem) if memory is None else min(memory, int(mem))
    return cpus, memory


def host_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in (_read(meminfo) or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def limits(root: Path | None = None, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Limits:
    """This process's CPU and memory: its cgroup's limits, capped by the host's."""
    root = CGROUP_ROOT if root is None else root
    paths = _cgroup_paths(proc_cgroup)
    if (root / "cgroup.controllers").exists():  # v2 mounted at the root
        cpus, memory = _v2_limits(root, paths.get("", "/"))
    else:
        cpus, memory = _v1_limits(root, paths)
    host_c, host_m = host_cpus(), host_memory_bytes()
    return Limits(cpus=min(cpus, host_c) if cpus else float(host_c),
                  memory_bytes=min(memory, host_m) if memory else host_m)


def _gib(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB"


def job_resource_problems(spec, num_train: int, memory_bytes: int) -> list[str]:
    """What a spec asks for beyond ``memory_bytes`` or sane bounds, given its
    dataset's training-image count. One line per problem, naming the fields."""
    problems = []
    size = spec.resolved_image_size()
    batch = spec.batch_size * size * size * INPUT_BYTES_PER_PIXEL * INPUT_BATCHES_HELD
    if batch > memory_bytes:
        problems.append(
            f"batch_size: {spec.batch_size} x image_size {size}: the input batches alone need "
            f"{_gib(batch)}, more than the trainer's {_gib(memory_bytes)} of memory")
    if spec.max_steps is None and num_train > 0 and spec.total_steps(num_train) > MAX_STEPS:
        problems.append(f"epochs: {spec.epochs} over {num_train} images is "
                        f"{spec.total_steps(num_train)} steps, more than {MAX_STEPS}")
    cache = (spec.augmented_views + 1) * num_train * FEATURE_BYTES_PER_VIEW
    if spec.augmented_views and cache > memory_bytes // 2:
        problems.append(
            f"augmented_views: {spec.augmented_views} x {num_train} images: the feature cache "
            f"needs up to {_gib(cache)} in memory, more than half the trainer's "
            f"{_gib(memory_bytes)}")
    return problems
