"""What a process may use: cgroup v2 and v1 limits read from a cgroup tree laid
out as the kernel does, the host's numbers as the fallback, and conversion
threads sized by the CPU quota."""

from __future__ import annotations

import threading

import pytest

from incept import resources
from incept.resources import host_cpus, host_memory_bytes, limits


def _write(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def _proc(tmp_path, text: str):
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def test_cgroup_v2_quota_and_memory_with_the_tightest_ancestor(tmp_path):
    root = tmp_path / "cg"
    _write(root, {"cgroup.controllers": "cpu memory",
                  "kubepods/cpu.max": "150000 100000", "kubepods/memory.max": "max",
                  "kubepods/pod1/cpu.max": "max 100000", "kubepods/pod1/memory.max": str(3 << 30)})
    got = limits(root, _proc(tmp_path, "0::/kubepods/pod1\n"))
    assert got.cpus == min(1.5, host_cpus()) and got.threads == min(2, host_cpus())
    assert got.memory_bytes == min(3 << 30, host_memory_bytes())


def test_cgroup_v2_inside_a_container_namespace(tmp_path):
    # A container sees its own cgroup at the mount's root and "0::/" in /proc.
    root = tmp_path / "cg"
    _write(root, {"cgroup.controllers": "cpu memory", "cpu.max": "50000 100000",
                  "memory.max": str(512 << 20)})
    got = limits(root, _proc(tmp_path, "0::/\n"))
    assert (got.cpus, got.threads, got.memory_bytes) == (0.5, 1, 512 << 20)


def test_cgroup_v1_and_unlimited_values_fall_back_to_the_host(tmp_path):
    root = tmp_path / "cg"
    _write(root, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000",
                  "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
                  "memory/docker/abc/memory.limit_in_bytes": str(1 << 30)})
    proc = _proc(tmp_path, "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
    assert limits(root, proc) == resources.Limits(1.0, min(1 << 30, host_memory_bytes()))
    _write(root, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1",
                  "memory/docker/abc/memory.limit_in_bytes": "9223372036854771712"})
    assert limits(root, proc) == resources.Limits(float(host_cpus()), host_memory_bytes())
    assert limits(tmp_path / "no-cgroups", proc) == limits(root, proc)


def test_this_machine(tmp_path):
    got = limits()
    assert 0 < got.cpus <= host_cpus() and 0 < got.memory_bytes <= host_memory_bytes()


def test_conversion_threads_follow_the_cpu_quota_not_the_host(tmp_path, monkeypatch):
    """One core of quota: one decoding thread, though this host has more cores
    (the cgroup tree stands in for a container's /sys/fs/cgroup)."""
    from incept.data.convert import convert
    from incept.data.synthetic import write_class_folders

    root = tmp_path / "cg"
    _write(root, {"cgroup.controllers": "cpu", "cpu.max": "100000 100000"})
    monkeypatch.setattr(resources, "CGROUP_ROOT", root)
    seen: set[str] = set()

    def progress(done, total):
        seen.update(t.name for t in threading.enumerate() if t.name.startswith("convert"))

    write_class_folders(tmp_path / "src", num_classes=2, per_class=12, size=(24, 24), seed=0)
    convert(tmp_path / "src", tmp_path / "out", progress=progress)
    assert len(seen) == 1, seen


@pytest.mark.parametrize("views,count,ok", [(0, 10**7, True), (3, 1000, True), (64, 10**6, False)])
def test_job_resource_problems(views, count, ok):
    from incept.spec import parse_spec

    spec = parse_spec({"dataset": "d", "model_name": "tiny", "image_size": 32, "epochs": 1,
                       "trainable_scopes": ["TinyNet/Logits"], "augmented_views": views})
    problems = resources.job_resource_problems(spec, count, 8 << 30)
    assert (problems == []) == ok, problems
    if not ok:
        assert problems[0].startswith("augmented_views: 64 x 1000000 images")
