"""kgenv build on the fixture fixes against Debian's current kernel: built, verified, booted — or refused."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kgenv.build import pipeline, skeleton
from kgenv.build import report as build_report
from kgenv.build.report import BuildReport
from kgenv.build.target import VMLINUX, gnu_build_id, shipped_modules
from kgenv.elf.symbols import SymbolIndex

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "patches"
ALL = sorted(p.stem for p in FIXTURES.glob("*.diff"))
BUILT = [n for n in ALL if tomllib.loads((FIXTURES / f"{n}.expect").read_text())["outcome"] == "built"]
REFUSED = [n for n in ALL if n not in BUILT]

pytestmark = pytest.mark.docker


def expect(name: str) -> dict:
    return tomllib.loads((FIXTURES / f"{name}.expect").read_text())


@pytest.fixture(scope="session")
def builds(env, docker_rt, tmp_path_factory):
    """Each fixture built once (accepted ones with the boot proof); results shared by the tests."""
    cache = {}

    def get(name: str) -> tuple[pipeline.Result, Path]:
        if name not in cache:
            out = tmp_path_factory.mktemp(f"build-{name}")
            check = FIXTURES / f"{name}.check"
            boot = name in BUILT
            req = pipeline.Request(
                diff=FIXTURES / f"{name}.diff",
                env=env,
                outdir=out,
                name=name,
                extra_tus=tuple(expect(name).get("tus", ())),  # --tu: the units a header change reaches
                boot_test=boot,
                check=check if boot else None,
            )
            cache[name] = (pipeline.build(req, docker_rt), out)
        return cache[name]

    return get


def test_fixtures_cover_the_issue():
    assert len(BUILT) >= 5 and len(REFUSED) >= 3
    for name in BUILT:
        assert (FIXTURES / f"{name}.check").is_file(), f"{name} has no guest check"


@pytest.mark.qemu
@pytest.mark.parametrize("name", BUILT)
def test_accepted_fix_builds_verifies_and_boots(builds, name):
    result, out = builds(name)
    rep = result.report
    assert rep.result.outcome == "built", rep.result.reason
    assert result.exit_code == 0
    assert sorted(f"{f.object}:{f.name}" for f in rep.replaced()) == sorted(expect(name)["replaced"])
    ko = out / f"livepatch-{name}.ko"
    assert ko.is_file() and rep.result.module_sha256
    assert (out / f"{name}.c").is_file() and (out / "Kbuild").is_file()
    for sym in expect(name).get("klp_symbols", []):
        assert sym in rep.result.klp_symbols
    for phrase in expect(name).get("notes", []):  # what the report must tell a reviewer
        assert any(phrase in n for n in rep.fix.notes), (phrase, rep.fix.notes)
    # the klp symbols really are SHN_LIVEPATCH in the handed-off module
    index = SymbolIndex.open(ko)
    klp_syms = [s for s in index.symbols if s.name.startswith(".klp.sym.")]
    assert len(klp_syms) == len(rep.result.klp_symbols)
    assert all(s.shndx == 0xFF20 for s in klp_syms)
    # no load-time dependency on a module it patches: the patch may come before the target
    raw = bytes(index.elf.section_data(index.elf.section(".modinfo")))
    modinfo = dict(kv.split(b"=", 1) for kv in raw.split(b"\0") if b"=" in kv)
    depends = set(filter(None, modinfo[b"depends"].decode().split(",")))
    assert not depends & {f.object for f in rep.replaced()}, depends
    # two levels deep, reproducer names the image
    assert rep.env.image_id in rep.kgenv.reproducer
    for group in rep.to_dict().values():
        for value in group.values() if isinstance(group, dict) else group:
            if isinstance(value, dict):
                assert all(not isinstance(v, (dict, list)) for v in value.values())
    assert rep.boot is not None and rep.boot.result == "pass", rep.boot
    assert rep.boot.phases["sympos"] == "ok"  # each old_sympos named the function in /proc/kallsyms
    assert build_report.load(out / "report.json") == rep
    # the build-id guard: vmlinux as the env recorded it, each target module as shipped, checked in the guest
    guard = rep.result.guard_build_ids
    assert set(guard) == {VMLINUX, *(f.object for f in rep.replaced())} and guard[VMLINUX] == rep.env.build_id
    log = Path(rep.boot.serial_log).read_text(errors="replace")
    for obj, build_id in guard.items():
        assert f"{obj} build-id {build_id} is the {rep.env.kernel_release} build kgenv verified" in log


@pytest.mark.qemu
@pytest.mark.parametrize("name, wrong", [("cmdline", VMLINUX), ("binfmt-misc-module", "binfmt_misc")])
def test_guard_refuses_another_build(env, docker_rt, tmp_path, monkeypatch, name, wrong):
    """A module built for a build whose build-id differs from the booted one (same release string,
    so vermagic takes it): the object's pre_patch guard refuses, insmod fails, nothing is patched."""
    real, other = skeleton.guard_ids, "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(skeleton, "guard_ids", lambda build_id, modules=None: {**real(build_id, modules), wrong: other})
    req = pipeline.Request(
        diff=FIXTURES / f"{name}.diff",
        env=env,
        outdir=tmp_path,
        name=name,
        boot_test=True,
        check=FIXTURES / f"{name}.check",
    )
    result = pipeline.build(req, docker_rt)
    rep = result.report
    assert result.exit_code == 1 and rep.result.outcome == "refused", rep.result.reason
    assert rep.boot is not None and rep.boot.phases["precheck"] == "ok" and rep.boot.phases["load"] == "fail"
    assert rep.result.guard_build_ids[wrong] == other and not list(tmp_path.glob("*.ko"))
    running = env.kernel.build_id if wrong == VMLINUX else gnu_build_id(shipped_modules(env)[wrong])
    log = Path(rep.boot.serial_log).read_text(errors="replace")
    mod = "livepatch_" + name.replace("-", "_")
    assert (
        f"{mod}: refusing to patch {wrong}: running build-id {running}, expected {other} "
        f"(the {env.kernel.release} build kgenv verified)"
    ) in log
    assert f"pre-patch callback failed for object '{wrong}'" in log
    if wrong != VMLINUX:  # vmlinux itself passed its guard first
        assert f"{mod}: vmlinux build-id {env.kernel.build_id} is the" in log


# binfmt_misc is unloaded before the patch loads and loaded again while it is enabled, so the guard runs
# on livepatch's module-coming path (the target's own load is refused on a mismatch)
COMING_CHECK = """LP=/sys/kernel/livepatch/livepatch_binfmt_misc_module
if [ ! -d $LP ]; then umount /tmp/bm 2>/dev/null; rmmod binfmt_misc; exit 1; fi
if [ "$(cat $LP/enabled)" = 1 ] && ! grep -q '^binfmt_misc ' /proc/modules; then
  insmod /kgenv/target/*binfmt_misc.ko
fi
mkdir -p /tmp/bm
grep -q binfmt_misc /proc/mounts || mount -t binfmt_misc none /tmp/bm || exit 2
grep -qx 'enabled (kgenv)' /tmp/bm/status
"""


@pytest.mark.qemu
def test_guard_refuses_another_build_of_a_module_loaded_later(env, docker_rt, tmp_path, monkeypatch):
    real, other = skeleton.guard_ids, "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(skeleton, "guard_ids", lambda b, m=None: {**real(b, m), "binfmt_misc": other})
    check = tmp_path / "coming.check"
    check.write_text(COMING_CHECK)
    req = pipeline.Request(
        diff=FIXTURES / "binfmt-misc-module.diff",
        env=env,
        outdir=tmp_path / "out",
        name="binfmt-misc-module",
        boot_test=True,
        check=check,
    )
    rep = pipeline.build(req, docker_rt).report
    assert rep.result.outcome == "refused" and rep.boot is not None, rep.result.reason
    assert rep.boot.phases["load"] == "ok" and rep.boot.phases["check"] == "fail"  # vmlinux passed its guard
    log = Path(rep.boot.serial_log).read_text(errors="replace")
    running = gnu_build_id(shipped_modules(env)["binfmt_misc"])
    assert f"refusing to patch binfmt_misc: running build-id {running}, expected {other}" in log
    assert "refusing to load module 'binfmt_misc'" in log


@pytest.mark.parametrize("name", REFUSED)
def test_refused_fix_writes_no_module(builds, name):
    result, out = builds(name)
    rep = result.report
    assert result.exit_code == 1, rep.result
    assert rep.result.outcome == "refused"
    assert expect(name)["reason"] in rep.result.reason
    assert rep.result.reason.startswith(expect(name)["class"] + ": ") and "\n" not in rep.result.reason
    for phrase in expect(name).get("notes", []):
        assert any(phrase in n for n in rep.fix.notes), (phrase, rep.fix.notes)
    assert not list(out.glob("*.ko")) and build_report.load(out / "report.json") == rep
    assert rep.boot is None


@pytest.mark.parametrize(
    "name, cls, function",
    [
        ("refuse-icf", "identical-code-folding", "ttpci_eeprom_decode_mac"),
        ("refuse-module-tracepoint", "special-section-in-target-module", "kyber_timer_fn"),
    ],
)
def test_refusal_class_is_one_line_and_recorded_per_function(builds, name, cls, function):
    result, _ = builds(name)
    rep = result.report
    assert rep.result.reason.startswith(f"{cls}: {function} ") and "\n" not in rep.result.reason
    assert [(f.name, f.verdict) for f in rep.functions if f.reason == cls] == [(function, "refused")]
    assert not any(f.verdict == "replaced" and f.name == function for f in rep.functions)


def test_cold_part_change_replaces_its_parent(builds):
    """Only sysctl_vm_numa_stat_handler.cold changed: the parent is registered, no .cold symbol is."""
    result, out = builds("cold-error-path")
    assert [f.name for f in result.report.replaced()] == ["sysctl_vm_numa_stat_handler"]
    assert "sysctl_vm_numa_stat_handler" in (out / "cold-error-path.c").read_text()
    assert ".cold" not in (out / "cold-error-path.c").read_text()


def test_generated_source_is_the_fix_plus_declarations(builds):
    """Reviewable: the fixed function as written; no second copy of kernel state."""
    result, out = builds("filesystems-static")
    text = (out / "filesystems-static-fs_filesystems.c").read_text()
    assert 'seq_printf(m, "#kgenv\\t%d\\n", fs_maxindex());' in text
    assert "static struct file_system_type *file_systems;" not in text
    assert "extern" in text and "file_systems" in text
    assert "int register_filesystem(struct file_system_type * fs)\n{" not in text  # unchanged: dropped
    assert "EXPORT_SYMBOL" not in text and "module_init(" not in text


def test_cli_bad_diff_is_one_line_error(tmp_path, env):
    bad = tmp_path / "bad.diff"
    bad.write_text("--- a/../../etc/passwd\n+++ b/../../etc/passwd\n@@ -1 +1 @@\n-x\n+y\n")
    r = subprocess.run(
        [sys.executable, "-m", "kgenv", "build", str(bad), "--env", env.name, "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "bad.diff" in r.stderr and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if not line.startswith("[")]  # progress lines aside
    assert errors == ["kgenv: bad.diff: path 'a/../../etc/passwd' escapes the kernel tree"]
    assert not list((tmp_path / "out").glob("*.ko"))


def test_cli_json_report(tmp_path, env):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kgenv",
            "build",
            str(FIXTURES / "refuse-init.diff"),
            "--env",
            env.name,
            "-o",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1, r.stderr
    rep = BuildReport.from_dict(json.loads(r.stdout), "stdout")
    assert rep.result.outcome == "refused" and "proc_cmdline_init" in rep.result.reason
    assert json.loads(r.stdout) == json.loads((tmp_path / "report.json").read_text())  # --json prints the report


def test_module_is_reproducible(builds, tmp_path, env):
    """The same diff in the same env gives the same module, byte for byte (a second, CLI build)."""
    result, _ = builds("cmdline")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kgenv",
            "build",
            str(FIXTURES / "cmdline.diff"),
            "--env",
            env.name,
            "-o",
            str(tmp_path),
            "--name",
            "cmdline",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    again = BuildReport.from_dict(json.loads(r.stdout), "stdout")
    assert again.result.module_sha256 == result.report.result.module_sha256
    assert (tmp_path / "cmdline-fs_proc_cmdline.c").read_text() == (
        Path(result.report.result.module).parent / "cmdline-fs_proc_cmdline.c"
    ).read_text()
