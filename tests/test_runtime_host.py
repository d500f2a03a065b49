"""The host runtime: mounts as rewritten symlinks, the env tree put back after each run, fingerprint refusal;
and, in the env image itself, a whole kgenv build run on the host runtime."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kgenv import manifest
from kgenv.build import report as build_report
from kgenv.errors import RefusedError, ToolError
from kgenv.runtime.base import Mount
from kgenv.runtime.host import HostRuntime, mount_links

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "envs" / "debian-6.1.0-57-amd64.toml"


def fake_env(tree: Path):
    m = manifest.parse(TEMPLATE.read_text(), str(TEMPLATE))
    return replace(m, kernel=replace(m.kernel, srctree=str(tree), objtree="obj"))


def test_mount_targets_become_symlinks_and_names_are_rewritten(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    rewrite = mount_links(
        tmp_path / "root",
        [Mount(a, "/kgenv-out"), Mount(b, "/kgenv-py/clang"), Mount(a / "k", "/run/kgenv-sign/key.pem")],
    )
    assert (
        rewrite("cp x /kgenv-out/y && ls /kgenv-out")
        == f"cp x {tmp_path}/root/kgenv-out/y && ls {tmp_path}/root/kgenv-out"
    )
    assert rewrite("PYTHONPATH=/kgenv-py") == f"PYTHONPATH={tmp_path}/root/kgenv-py"
    assert rewrite("/kgenv-outside /run/x") == "/kgenv-outside /run/x"  # only whole names, only the mounts
    assert rewrite("/run/kgenv-sign/key.pem") == f"{tmp_path}/root/run/kgenv-sign/key.pem"
    assert (tmp_path / "root" / "kgenv-py" / "clang").resolve() == b
    with pytest.raises(ToolError, match="exists on this host"):
        mount_links(tmp_path / "root2", [Mount(a, "/tmp")])


def test_runs_see_their_mounts_and_the_tree_comes_back_as_it_was(tmp_path):
    tree = tmp_path / "tree"
    (tree / "fs").mkdir(parents=True)
    (tree / "fs" / "a.c").write_text("original\n")
    (tree / "obj").mkdir()
    (tree / "obj" / "Makefile").write_text("include ../Makefile\n")
    overlay, out = tmp_path / "overlay", tmp_path / "out"
    (overlay / "fs").mkdir(parents=True)
    (overlay / "fs" / "a.c").write_text("patched\n")
    out.mkdir()
    rt = HostRuntime(fake_env(tree), check=False)
    script = (
        "cp -a /kgenv-overlay/. . && cat fs/a.c > /kgenv-out/seen && echo obj > obj/a.o && mkdir -p new/d"
        " && echo rewritten > obj/Makefile"
    )
    r = rt.run(
        rt.m.image.id,
        ["bash", "-c", script],
        [Mount(overlay, "/kgenv-overlay"), Mount(out, "/kgenv-out", read_only=False)],
        workdir=str(tree),
    )
    assert r.exit_code == 0, r.output
    assert (out / "seen").read_text() == "patched\n"
    assert (tree / "fs" / "a.c").read_text() == "original\n"
    assert not (tree / "obj" / "a.o").exists() and not (tree / "new").exists()
    assert (tree / "obj" / "Makefile").read_text() == "include ../Makefile\n"  # the O= tree, as it was
    # A change the runtime cannot undo is an error, not a silently different tree.
    with pytest.raises(ToolError, match="cannot undo: fs/a.c"):
        rt.run(rt.m.image.id, ["bash", "-c", "echo changed > fs/a.c"], workdir=str(tree))


def test_a_host_that_is_not_the_env_is_refused_with_the_differences(tmp_path):
    m = manifest.parse(TEMPLATE.read_text(), str(TEMPLATE))
    # Whatever this machine has, it is not this env: another compiler pin, string and tree path.
    m = replace(
        m,
        toolchain={**m.toolchain, "gcc-12": "12.2.0-0kgenv1"},
        fingerprint={**m.fingerprint, "cc_version_text": "gcc-12 (kgenv) 12.2.0"},
        kernel=replace(m.kernel, srctree=str(tmp_path / "no-tree")),
    )
    with pytest.raises(RefusedError) as e:
        HostRuntime(m)
    msg = str(e.value)
    assert "not env debian-6.1.0-57-amd64's build root" in msg and "\n" not in msg
    assert "(recorded 12.2.0-0kgenv1)" in msg and "(recorded 'gcc-12 (kgenv) 12.2.0')" in msg
    assert f"{tmp_path}/no-tree/" in msg and "no prepared kernel tree at the recorded path" in msg


@pytest.mark.archive
@pytest.mark.docker
def test_kgenv_build_on_the_host_runtime_inside_the_env_image(env, envs_dir, tmp_path):
    """The env image is a build root: fingerprint equal, the fix built and verified, the tree untouched.

    kgenv runs there with this interpreter (lent read-only, like the checkout): the image's own
    python3 is the one stages run, exactly as in a container build.
    """
    from kgenv.fsutil import cache_dir

    out = tmp_path / "out"
    out.mkdir()
    cache = tmp_path / "cache"
    (cache / "kernels").mkdir(parents=True)
    python = Path(sys.executable).resolve()
    mounts = {
        ROOT: str(ROOT),
        python.parents[1]: str(python.parents[1]),
        envs_dir: "/envs",
        cache_dir() / "kernels": "/cache/kernels",
    }
    args = [
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{out}:/out",
        "-v",
        f"{cache}:/cache",
        *[x for h, t in mounts.items() for x in ("-v", f"{h}:{t}:ro")],
        "-e",
        f"PYTHONPATH={ROOT}",
        "-e",
        "KGENV_ENVS=/envs",
        "-e",
        "KGENV_CACHE=/cache",
        "-e",
        "PYTHONDONTWRITEBYTECODE=1",
        "-w",
        "/tmp",
        env.image.id,
        str(python),
        str(ROOT / "tests" / "host_build_driver.py"),
        env.name,
        str(ROOT / "fixtures" / "patches" / "cmdline.diff"),
        "/out",
        "cmdline",
    ]
    r = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["differences"] == []
    assert (result["outcome"], result["exit_code"]) == ("built", 0), result["reason"]
    assert result["tree_unchanged"]
    report = build_report.load(out / "report.json")
    assert [f.name for f in report.replaced()] == ["cmdline_proc_show"]
    assert (out / "livepatch-cmdline.ko").is_file()
