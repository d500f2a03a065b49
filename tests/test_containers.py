"""Build containers are hardened: no capabilities (unless a mount belongs to another user), no privilege
gain, bounded processes and memory, no network; and kgenv removes every container it starts."""

import os
import re
from pathlib import Path

import pytest

from kgenv.runtime import docker as kdocker
from kgenv.runtime.base import Mount

# CAP_CHOWN (0), CAP_DAC_OVERRIDE (1), CAP_FOWNER (3)
FILE_CAPS_MASK = (1 << 0) | (1 << 1) | (1 << 3)

STATUS = (
    "grep -E '^(CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status;"
    " for f in /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max; do [ -r $f ] && echo PIDS=$(cat $f); done;"
    " for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes;"
    " do [ -r $f ] && echo MEM=$(cat $f); done; echo IFACES=$(ls /sys/class/net | tr '\\n' ' ')"
)


def _status(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)[:=]\s*(.*?)\s*$", output, re.M))


def test_a_root_owned_mount_keeps_no_capability(tmp_path):
    os.chown(tmp_path, 0, 0)
    opts = kdocker.hardening([Mount(tmp_path, "/out", read_only=False)])
    assert opts["cap_drop"] == ["ALL"] and opts["cap_add"] == []
    assert opts["security_opt"] == ["no-new-privileges"]
    assert (
        opts["pids_limit"] == kdocker.PIDS_LIMIT and opts["mem_limit"] == opts["memswap_limit"] == kdocker.MEMORY_LIMIT
    )
    assert opts["labels"] == {kdocker.LABEL: str(os.getpid())}


def test_a_mount_of_another_user_gets_the_file_capabilities_only(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, 1000, 1000)
    opts = kdocker.hardening([Mount(tmp_path, "/a"), Mount(other, "/b", read_only=False)])
    assert opts["cap_drop"] == ["ALL"] and sorted(opts["cap_add"]) == ["CHOWN", "DAC_OVERRIDE", "FOWNER"]


def test_a_missing_mount_source_is_no_error(tmp_path):
    assert kdocker.hardening([Mount(tmp_path / "absent", "/x")])["cap_add"] == []


@pytest.mark.docker
def test_a_build_container_runs_without_capabilities_and_within_limits(env, docker_rt, tmp_path):
    os.chown(tmp_path, 0, 0)
    r = docker_rt.run(env.image.id, ["bash", "-c", STATUS], [Mount(tmp_path, "/out", read_only=False)])
    assert r.exit_code == 0, r.output
    s = _status(r.output)
    for cap in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(s[cap], 16) == 0, r.output
    assert s["NoNewPrivs"] == "1", r.output
    assert int(s["PIDS"]) == kdocker.PIDS_LIMIT, r.output
    assert int(s["MEM"]) == kdocker.MEMORY_LIMIT, r.output
    assert s["IFACES"] == "lo", r.output  # network off (it was before; it stays)


@pytest.mark.docker
def test_root_without_capabilities_cannot_do_what_root_can(env, docker_rt):
    # what the dropped capabilities are for: a device node, another user's id, a raw socket, chroot
    script = (
        "mknod /tmp/null c 1 3 2>/dev/null && echo MKNOD;"
        " setpriv --reuid=1 true 2>/dev/null && echo SETUID;"
        " chroot / true 2>/dev/null && echo CHROOT;"
        " touch /tmp/f && chown 1:1 /tmp/f 2>/dev/null && echo CHOWN; echo done"
    )
    r = docker_rt.run(env.image.id, ["bash", "-c", script])
    assert r.output.split() == ["done"], r.output


@pytest.mark.docker
def test_a_mount_of_another_user_is_usable_with_the_file_capabilities_alone(env, docker_rt, tmp_path):
    # kgenv run by a docker-group user: its work dirs are not root's; `cp -a` of them into the tree
    # must keep owner and mode, and the container must write into them
    src, out = tmp_path / "src", tmp_path / "out"
    (src / "fs").mkdir(parents=True)
    (src / "fs" / "x.c").write_text("int x;\n")
    out.mkdir()
    for p in (src, src / "fs", src / "fs" / "x.c", out):
        os.chown(p, 1000, 1000)
        p.chmod(0o700 if p.is_dir() else 0o600)
    script = (
        "set -e; mkdir /tmp/tree; cd /tmp/tree; cp -a /src/. .; stat -c '%u %a' fs/x.c; echo hi > /out/f; " + STATUS
    )
    r = docker_rt.run(env.image.id, ["bash", "-c", script], [Mount(src, "/src"), Mount(out, "/out", read_only=False)])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "1000 600"
    assert (out / "f").read_text() == "hi\n"
    assert int(_status(r.output)["CapEff"], 16) == FILE_CAPS_MASK, r.output


@pytest.mark.docker
def test_a_run_leaves_no_container(env, docker_rt):
    import docker

    c = docker.from_env()
    before = {x.id for x in c.containers.list(all=True, filters={"label": f"{kdocker.LABEL}={os.getpid()}"})}
    assert docker_rt.run(env.image.id, ["false"]).exit_code == 1
    after = {x.id for x in c.containers.list(all=True, filters={"label": f"{kdocker.LABEL}={os.getpid()}"})}
    assert after == before == set()


@pytest.mark.docker
def test_stop_all_ends_a_running_container_and_its_run_removes_it(env, docker_rt):
    import threading
    import time

    import docker

    c = docker.from_env()
    mine = {"label": f"{kdocker.LABEL}={os.getpid()}"}
    result = {}
    t = threading.Thread(target=lambda: result.update(r=docker_rt.run(env.image.id, ["sleep", "300"])))
    t.start()
    deadline = time.monotonic() + 60
    while not c.containers.list(filters=mine) and time.monotonic() < deadline:
        time.sleep(0.2)
    kdocker.stop_all()
    t.join(60)
    assert not t.is_alive()
    assert result["r"].exit_code == 137
    assert c.containers.list(all=True, filters=mine) == []


def test_the_limits_fit_the_machines():
    # docs/build.md states them; a TU needs < 2 GB, make -j2 peaks at ~25 processes
    assert 2 * 1024**3 < kdocker.MEMORY_LIMIT <= 16 * 1024**3
    assert 100 <= kdocker.PIDS_LIMIT <= 4096
    doc = (Path(__file__).resolve().parent.parent / "docs" / "build.md").read_text()
    assert f"{kdocker.MEMORY_LIMIT >> 30} GiB" in doc and f"{kdocker.PIDS_LIMIT} processes" in doc


@pytest.mark.docker
def test_a_container_over_its_memory_limit_says_so(env, docker_rt, monkeypatch):
    monkeypatch.setattr(kdocker, "MEMORY_LIMIT", 64 * 1024**2)
    # bash holds 256 MB in one variable
    r = docker_rt.run(env.image.id, ["bash", "-c", "x=$(head -c 256M /dev/zero | tr '\\0' a); echo ${#x}"])
    assert r.exit_code != 0
    assert r.output.splitlines()[-1] == (
        "kgenv: the container hit its memory limit (64 MiB, kgenv.runtime.docker.MEMORY_LIMIT)"
    )
