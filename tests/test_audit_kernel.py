"""Real-kernel tier of `kgenv audit`: Debian bookworm's kernel against its own image, gcc-11 and trixie's gcc-14;
vmlinux and module TUs (multi-object modules among them) verified against their own shipped objects."""

import json
import os
import shutil
import subprocess
import sys

import junitparser
import pytest
from browser import distinct_colours, screenshot

from kgenv.audit import sample
from kgenv.audit.candidate import DockerRunner
from kgenv.audit.foreign import tag_of

pytestmark = [pytest.mark.archive, pytest.mark.docker]

N = 20


def kgenv(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "kgenv", "audit", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=1800,
    )


def audited(env, tmp_path_factory, name, *args) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp(name) / "report.json"
    r = kgenv("--env", env.name, "--sample", str(N), "--seed", "0", *args, "--format", "json", "-o", str(out))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return json.loads(out.read_text()), r


@pytest.fixture(scope="module")
def own(env, tmp_path_factory):
    return audited(env, tmp_path_factory, "own")


# the foreign compilers are measured on vmlinux TUs (the figures of bench/audit_results.md)
@pytest.fixture(scope="module")
def gcc11(env, tmp_path_factory):
    return audited(env, tmp_path_factory, "gcc11", "--cc", "gcc-11", "--objects", "vmlinux")


@pytest.fixture(scope="module")
def gcc14(env, tmp_path_factory):
    return audited(env, tmp_path_factory, "gcc14", "--toolchain", "debian:trixie/gcc-14", "--objects", "vmlinux")


def test_own_image_reproduces_a_sample_of_20(own):
    report, r = own
    assert r.returncode == 0, r.stderr
    s = report["summary"]
    assert report["verdict"] == "reproduces" and report["exit_code"] == 0
    assert s["tus"] == N and s["tus_identical"] == N and s["tus_build_failed"] == 0
    assert s["percent_identical"] == 100.0 and s["differing"] == 0 and s["unmatched"] == 0
    assert s["functions"] >= 100  # evidence, not an empty sample
    assert report["fingerprint"] and all(f["same"] for f in report["fingerprint"]), [
        f for f in report["fingerprint"] if not f["same"]
    ]
    info = report["sample"]
    assert info["mode"] == "sample" and info["objects"] == "all" and info["population_vmlinux"] > 1500
    assert info["population_modules"] > 5000 and info["modules"] > 1000 and info["note"] == ""
    # modules are sampled too, each TU verified against its own shipped object
    mods = [t for t in report["tus"] if t["object"] != "vmlinux"]
    assert 1 <= len(mods) < N and s["module_tus"] == len(mods) == info["sampled_modules"]
    assert all(t["object"] for t in report["tus"])
    assert report["timings"]["compile_s"] > 0 and ": reproduces, " in r.stderr


def test_sample_is_drawn_from_the_shipped_binaries_and_seeded(env, docker_rt, debian_kernel, own):
    runner = DockerRunner(docker_rt, env.image.id, env)
    pop = sample.units(str(debian_kernel.vmlinux), env, runner)
    assert "fs/proc/cmdline.o" in pop.vmlinux and "kernel/sched/core.o" in pop.vmlinux
    assert not any(t.startswith("drivers/firmware/efi/libstub/") for t in pop.vmlinux)
    # multi-object modules of several subsystems are in the population, unit by unit
    assert pop.object_of("drivers/usb/core/quirks.o") == "usbcore" and pop.object_of("fs/ext4/inline.o") == "ext4"
    assert pop.object_of("net/bridge/br_stp.o") == "bridge" and pop.object_of("fs/xfs/libxfs/xfs_bmap.o") == "xfs"
    assert pop.object_of("fs/overlayfs/super.o") == "overlay" and pop.object_of("arch/x86/kvm/x86.o") == "kvm"
    chosen = sample.choose_units(pop, N, 0)
    assert chosen == [t["tu"] for t in own[0]["tus"]]  # the CLI drew the same TUs with seed 0
    assert {pop.object_of(t) for t in chosen} == {t["object"] for t in own[0]["tus"]}
    assert sample.choose_units(pop, N, 1) != chosen
    assert sample.choose_units(pop, N, 0, "vmlinux") == sample.choose(pop.vmlinux, N, 0)


def test_module_tus_verify_against_their_shipped_modules(env, tmp_path):
    """Named TUs of three multi-object modules (usbcore, bridge, ext4) and one of vmlinux, in one audit.
    br_stp.o reads a merged `.rodata.cst2` constant: compared by value, not by its `.LCn` label."""
    out = tmp_path / "named.json"
    r = kgenv(
        "--env", env.name, "--tu", "drivers/usb/core/quirks.c", "--tu", "net/bridge/br_stp.c", "--tu",
        "fs/ext4/inline.c", "--tu", "fs/proc/cmdline.o", "--format", "json", "-o", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    objects = {t["tu"]: t["object"] for t in report["tus"]}
    assert objects == {
        "drivers/usb/core/quirks.o": "usbcore",
        "net/bridge/br_stp.o": "bridge",
        "fs/ext4/inline.o": "ext4",
        "fs/proc/cmdline.o": "vmlinux",
    }
    assert all(t["status"] == "identical" and t["compared"] > 0 for t in report["tus"]), report["tus"]
    s = report["summary"]
    assert report["verdict"] == "reproduces" and s["percent_identical"] == 100.0 and s["module_tus"] == 3
    assert s["identical"] >= 60 and report["sample"]["sampled_modules"] == 3


def _mismatch(report: dict, r, version: str) -> None:
    assert r.returncode == 1, r.stderr
    assert report["verdict"] == "mismatch" and report["exit_code"] == 1
    s = report["summary"]
    assert s["differing"] > 20 and s["tus_identical"] < N and s["tus_build_failed"] == 0
    names = {d["name"] for d in report["differing"]}
    assert len(names) > 20 and all(names)
    differs = [d for d in report["differing"] if d["outcome"] == "differs"]
    assert differs and all(d["reason"] and d["object_insn"] for d in differs)
    found = {f["item"]: f for f in report["fingerprint"]}
    assert found["compiler.version"]["candidate"].startswith(version) and not found["compiler.version"]["same"]
    assert not found["config.GCC_VERSION"]["same"]


def test_gcc11_is_a_mismatch_with_functions_named(gcc11):
    _mismatch(*gcc11, "11.")
    assert {f["item"]: f for f in gcc11[0]["fingerprint"]}["make.CC"]["candidate"] == "gcc-11"


def test_trixie_gcc14_is_a_mismatch_with_functions_named(gcc14, env, docker_rt):
    _mismatch(*gcc14, "14.")
    found = {f["item"]: f for f in gcc14[0]["fingerprint"]}
    assert found["compiler.package-release"]["kind"] == "package-release"
    assert not found["binutils.version"]["same"]  # trixie's binutils came with its compiler
    image = docker_rt.image_id(tag_of(env, "trixie", "gcc-14"))
    assert image and gcc14[0]["candidate"]["image"] == image  # cached, and usable as --toolchain image:ID


@pytest.mark.parametrize("which", ["gcc11", "gcc14"])
def test_junit_parses_and_fails_per_tu(which, request, tmp_path):
    report, _ = request.getfixturevalue(which)
    src = tmp_path / "report.json"
    src.write_text(json.dumps(report))
    xml = tmp_path / "audit.xml"
    r = kgenv("--from-json", str(src), "--format", "junit", "-o", str(xml))
    assert r.returncode == 1, r.stderr
    (suite,) = list(junitparser.JUnitXml.fromfile(str(xml)))
    cases = list(suite)
    assert len(cases) == N and {c.name for c in cases} == {t["tu"] for t in report["tus"]}
    failed = [c for c in cases if c.result and isinstance(c.result[0], junitparser.Failure)]
    assert len(failed) == N - report["summary"]["tus_identical"] and suite.failures == len(failed)
    differing = {d["name"] for d in report["differing"]}
    for case in failed:
        named = [n for n in differing if n in case.result[0].message]
        assert named, case.result[0].message


def test_html_renders_in_headless_chromium(gcc14, tmp_path):
    src = tmp_path / "report.json"
    src.write_text(json.dumps(gcc14[0]))
    page = tmp_path / "audit.html"
    assert kgenv("--from-json", str(src), "--format", "html", "-o", str(page)).returncode == 1
    text = page.read_text()
    assert "<svg" in text and "shipped vmlinux" in text and gcc14[0]["differing"][0]["name"] in text
    png = screenshot(page, tmp_path / "audit.png")
    assert distinct_colours(png) > 50  # chart bars, badges and text, not a blank page


def test_all_envs_one_row_per_kernel(env, envs_dir, tmp_path):
    fleet = tmp_path / "envs"
    fleet.mkdir()
    shutil.copy(envs_dir / f"{env.name}.toml", fleet)
    r = kgenv("--all", "--tu", "fs/proc/cmdline.o", "--json", env={**os.environ, "KGENV_ENVS": str(fleet)})
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert [e["env"] for e in d["envs"]] == [env.name] and d["envs"][0]["verdict"] == "reproduces"
    r = kgenv("--all", "--toolchain", "image:x", env={**os.environ, "KGENV_ENVS": str(fleet)})
    assert r.returncode == 2 and "one kernel's tree" in r.stderr


def test_bad_input_is_one_line_exit_2(env):
    r = kgenv("--env", env.name, "--tu", "../../etc/passwd.o")
    assert r.returncode == 2 and "not a translation unit" in r.stderr and "Traceback" not in r.stderr
    r = kgenv("--env", env.name, "--toolchain", "image:sha256:0000")
    assert r.returncode == 2 and "no such image" in r.stderr


def test_host_toolchain_in_a_private_copy_of_the_tree(env, tmp_path):
    """This machine's compiler (CI runs on bookworm: the same gcc-12 build) on an unpacked copy of the tree."""
    host_cc = subprocess.run([env.make["CC"], "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    out = tmp_path / "host.json"
    r = kgenv(
        "--env",
        env.name,
        "--toolchain",
        "host",
        "--tu",
        "fs/proc/cmdline.o",
        "--tu",
        "lib/lockref.o",
        "--json",
        "-o",
        str(out),
    )
    report = json.loads(out.read_text())
    assert report["candidate"]["kind"] == "host" and report["candidate"]["image"] == ""
    cc = {f["item"]: f for f in report["fingerprint"]}["compiler.package-release"]
    if host_cc == env.fingerprint["cc_version_text"]:
        assert r.returncode == 0 and report["verdict"] == "reproduces", r.stderr
        assert report["summary"]["identical"] >= 9 and cc["same"]
    else:  # another host compiler: the audit must say so, with evidence
        assert r.returncode == 1 and not cc["same"]
