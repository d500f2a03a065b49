"""Real-kernel tier: Debian's -dbg vmlinux indexed, and a rebuilt sample of TUs verified 100 % identical."""

import pytest
from verify_sample import SAMPLE

from kgenv.build.compile import compile_tus
from kgenv.elf.symbols import SymbolIndex
from kgenv.verify import ftrace, open_binary, verify
from kgenv.verify.records import IDENTICAL, NOT_TRACEABLE, WEAK_OVERRIDDEN

pytestmark = [pytest.mark.archive, pytest.mark.docker]

# the built-in sample, plus one module checked against the shipped .ko
MODULE = ("drivers/block/loop.o", "kernel/drivers/block/loop.ko")


@pytest.fixture(scope="session")
def vmlinux(debian_kernel):
    return open_binary(debian_kernel.vmlinux)


@pytest.fixture(scope="session")
def rebuilt(env, docker_rt, tmp_path_factory):
    """The sample rebuilt in the env image, exactly as `kgenv build` compiles."""
    return compile_tus(docker_rt, env, SAMPLE + [MODULE[0]], tmp_path_factory.mktemp("rebuilt"))


def test_index_whole_vmlinux(debian_kernel):
    index = SymbolIndex.open(debian_kernel.vmlinux)  # its time (1 s bar): bench/bench_verify.py
    assert len(index.functions) > 40_000
    cmdline = index.function("cmdline_proc_show")
    assert cmdline.section == ".text" and cmdline.file == "cmdline.c" and cmdline.size > 0
    copies = index.functions["type_show"]
    assert len(copies) > 5
    assert [c.sympos for c in copies] == list(range(1, len(copies) + 1))
    assert [c.value for c in copies] == sorted(c.value for c in copies)  # kallsyms is address order


def test_ftrace_sites_of_the_real_image(vmlinux):
    cmdline = vmlinux.functions("cmdline_proc_show")[0]
    assert cmdline.value in vmlinux.mcount_sites()
    assert ftrace.check(vmlinux, cmdline).traceable
    start = vmlinux.functions("start_kernel")[0]
    result = ftrace.check(vmlinux, start)
    assert not result.traceable and ".init.text" in result.detail


def test_rebuilt_sample_is_identical(vmlinux, rebuilt):
    report = verify([rebuilt[o] for o in SAMPLE], vmlinux)
    bad = [
        v
        for v in report.verdicts
        if v.verdict not in (IDENTICAL, NOT_TRACEABLE, WEAK_OVERRIDDEN)
        or (v.verdict == NOT_TRACEABLE and not v.code_identical)
    ]
    assert not bad, bad[:5]
    weak = {v.name for v in report.verdicts if v.verdict == WEAK_OVERRIDDEN}
    assert "arch_prctl_spec_ctrl_get" in weak
    assert report.summary.relocs_checked > 5000


def test_rebuilt_module_matches_shipped_ko(debian_kernel, rebuilt):
    ko = open_binary(debian_kernel.modules_dir / MODULE[1])
    report = verify([rebuilt[MODULE[0]]], ko)
    assert report.verdicts and all(v.code_identical for v in report.verdicts), report.summary.by_verdict


def test_another_compiler_is_flagged(env, docker_rt, vmlinux, tmp_path_factory):
    """Negative control: the same TUs built by Debian's gcc-11 must not pass as identical."""
    from kgenv.image.derive import with_packages

    image = with_packages(docker_rt, env, ["gcc-11"])
    tus = ["fs/proc/cmdline.o", "kernel/sys.o", "fs/namei.o"]
    objs = compile_tus(
        docker_rt, env, tus, tmp_path_factory.mktemp("gcc-11"), image=image, make_overrides={"CC": "gcc-11"}
    )
    report = verify([objs[t] for t in tus], vmlinux)
    differing = [v for v in report.verdicts if not v.code_identical]
    assert len(differing) > 20, report.summary.by_verdict
    assert all(v.name for v in differing)


def test_cli_verify_against_the_env(env, rebuilt):
    """`kgenv verify --env NAME` takes the env's recorded -dbg vmlinux; exit 0 when identical and traceable."""
    import json
    import os
    import subprocess
    import sys

    obj = str(rebuilt["fs/proc/cmdline.o"])

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "kgenv", "verify", "--env", env.name, *a],
            capture_output=True,
            text=True,
            env=dict(os.environ),
        )

    r = run("--function", "cmdline_proc_show", "--json", obj)
    assert r.returncode == 0, r.stdout + r.stderr
    (fn,) = json.loads(r.stdout)["functions"]
    assert fn["verdict"] == IDENTICAL and fn["trace"]
    r = run("--json", obj)  # proc_cmdline_init is __init: identical code, but not traceable
    assert r.returncode == 1
    assert {f["name"]: f["verdict"] for f in json.loads(r.stdout)["functions"]}["proc_cmdline_init"] == NOT_TRACEABLE
