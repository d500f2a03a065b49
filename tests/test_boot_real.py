"""Real boots of the shipped Debian kernel under QEMU/TCG: a pass and each kind of failure."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from boot_kmod import build_module
from click.testing import CliRunner

from kgenv.boot import boot_test, qemu
from kgenv.cli import cli

pytestmark = [pytest.mark.qemu, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[1]
PATCHED = "grep -q 'this has been live patched' /proc/cmdline\n"


@pytest.fixture(scope="session")
def boot_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("boot")


@pytest.fixture(scope="session")
def sample_ko(livepatch_sample_ko) -> Path:
    return livepatch_sample_ko


@pytest.fixture(scope="session")
def unresolved_ko(env, docker_rt, boot_dir) -> Path:
    src = REPO / "kernel/samples/kgenv-unresolved.c"
    return build_module(env, docker_rt, [src], boot_dir / "unresolved", allow_undefined=True)


@pytest.fixture(scope="session")
def stuck_ko(env, docker_rt, boot_dir) -> Path:
    return build_module(env, docker_rt, [REPO / "kernel/samples/kgenv-stuck.c"], boot_dir / "stuck")


@pytest.fixture(scope="session")
def oops_ko(env, docker_rt, boot_dir) -> Path:
    return build_module(env, docker_rt, [REPO / "kernel/samples/kgenv-oops.c"], boot_dir / "oops")


@pytest.fixture(scope="session")
def check_patched(boot_dir) -> Path:
    path = boot_dir / "check-patched.sh"
    path.write_text(PATCHED)
    return path


def _offset_from_text(vmlinux: Path, name: str) -> str:
    """Where `name` sits relative to _text in the -dbg vmlinux (KASLR keeps this distance)."""
    out = subprocess.run(["nm", str(vmlinux)], capture_output=True, text=True, check=True).stdout
    addr = {}
    for line in out.splitlines():
        a, _, sym = line.split()[:3]
        if sym in ("_text", name):
            addr.setdefault(sym, int(a, 16))
    return hex(addr[name] - addr["_text"])


def _log(tmp_path: Path) -> Path:
    return tmp_path / "serial.log"


def test_sample_livepatch_passes(debian_kernel, sample_ko, check_patched, tmp_path):
    offset = _offset_from_text(debian_kernel.vmlinux, "cmdline_proc_show")
    sympos = f"vmlinux cmdline_proc_show 0 {offset}\n"
    boot = boot_test(sample_ko, debian_kernel.vmlinuz, check=check_patched, sympos=sympos, serial_log=_log(tmp_path))
    assert boot.result == "pass", (boot.reason, boot.kernel_log)
    assert boot.release == debian_kernel.abi
    assert set(boot.phases.values()) == {"ok"}
    assert boot.sympos == {"vmlinux:cmdline_proc_show:0": "ok"}
    for phase in ("to_init", "kernel", "load", "enable", "disable", "guest"):
        assert boot.timings[phase] is not None and boot.timings[phase] >= 0, phase
    # its time against the 30 s bar: bench/bench_boot.py
    log = Path(boot.serial_log).read_text(errors="replace")
    assert "livepatch: 'livepatch_sample': patching complete" in log
    assert "livepatch: 'livepatch_sample': unpatching complete" in log


def test_unresolved_symbol_fails_with_the_kernel_reason(debian_kernel, unresolved_ko, check_patched, tmp_path):
    boot = boot_test(unresolved_ko, debian_kernel.vmlinuz, check=check_patched, serial_log=_log(tmp_path))
    assert boot.result == "fail"
    assert boot.phases["load"] == "fail" and boot.phases["enable"] == "not-reached"
    assert boot.reason.startswith("load: the module did not load")
    assert any(re.search(r"kgenv_unresolved: Unknown symbol kgenv_no_such_symbol", ln) for ln in boot.kernel_log), (
        boot.kernel_log
    )


def test_check_that_never_passes_fails(env, sample_ko, tmp_path):
    check = tmp_path / "never.sh"
    check.write_text("grep -q 'text no patch prints' /proc/cmdline\n")
    result = CliRunner().invoke(
        cli,
        ["boot-test", str(sample_ko), "--env", env.name, "--check", str(check), "--json", "--log", str(_log(tmp_path))],
    )
    assert result.exit_code == 1, result.output
    record = json.loads(result.output)
    assert record["result"] == "fail"
    assert record["phases"]["precheck"] == "ok" and record["phases"]["enable"] == "ok"
    assert record["phases"]["check"] == "fail"
    assert record["reason"].startswith("check: the check does not pass with the patch applied")


def test_wrong_sympos_fails(debian_kernel, sample_ko, check_patched, tmp_path):
    boot = boot_test(
        sample_ko,
        debian_kernel.vmlinuz,
        check=check_patched,
        sympos="vmlinux cmdline_proc_show 2\n",
        serial_log=_log(tmp_path),
    )
    assert boot.result == "fail" and boot.phases["sympos"] == "fail"
    assert "sympos 2 but vmlinux has only 1 symbols cmdline_proc_show" in boot.reason
    assert boot.sympos == {"vmlinux:cmdline_proc_show:2": "fail"}


def test_transition_that_never_completes_fails_naming_the_task(debian_kernel, stuck_ko, tmp_path):
    boot = boot_test(stuck_ko, debian_kernel.vmlinuz, transition_timeout=3, serial_log=_log(tmp_path))
    assert boot.result == "fail" and boot.phases["enable"] == "fail"
    assert boot.reason.startswith("enable: the transition to the patched state did not complete")
    assert "still running after 3s" in boot.reason  # the bound given, not the default
    assert boot.timings["enable"] >= 3  # and the guest waited it out
    assert "stuck: kthreadd (pid 2)" in boot.kernel_log
    assert any("kthreadd+" in line for line in boot.kernel_log if line.startswith("stack> "))


def test_kernel_panic_ends_the_run_with_the_oops(debian_kernel, oops_ko, tmp_path, monkeypatch):
    runs, real_run = [], qemu.run

    def recorded_run(*args, **kwargs):
        runs.append(real_run(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(qemu, "run", recorded_run)
    boot = boot_test(oops_ko, debian_kernel.vmlinuz, timeout=60, serial_log=_log(tmp_path))
    assert boot.result == "fail" and boot.phases["load"] == "not-reached"
    assert boot.reason.startswith("kernel panic during phase load: ")
    assert "BUG: kernel NULL pointer dereference" in boot.reason
    (run,) = runs
    assert not run.timed_out and run.returncode is not None  # QEMU ended on the panic, not at the timeout
    assert any("RIP: 0010:kgenv_oops_init" in line for line in boot.kernel_log)


@pytest.fixture(scope="session")
def pinned_ko(env, docker_rt, livepatch_sample_src, boot_dir) -> Path:
    """The kernel's sample pinned as kgenv pins a patch whose new functions may be pointed to."""
    src = boot_dir / "pinned-src" / "livepatch-pinned.c"
    src.parent.mkdir()
    text = (livepatch_sample_src / "livepatch-sample.c").read_text()
    enable = "return klp_enable_patch(&patch);"
    assert text.count(enable) == 1, "the kernel's sample changed: fix the test"
    src.write_text(
        text.replace(
            enable, "int ret = klp_enable_patch(&patch);\n\tif (!ret)\n\t\t__module_get(THIS_MODULE);\n\treturn ret;"
        )
    )
    return build_module(env, docker_rt, [src], boot_dir / "pinned")


@pytest.mark.parametrize("told", [True, False])
def test_a_pinned_patch_stays_loaded(debian_kernel, pinned_ko, check_patched, tmp_path, told):
    """Pinned: rmmod must be refused (the unload phase proves it); a pin the boot was not told of fails."""
    boot = boot_test(pinned_ko, debian_kernel.vmlinuz, check=check_patched, serial_log=_log(tmp_path), pinned=told)
    if told:
        assert boot.result == "pass", (boot.reason, boot.kernel_log)
        assert boot.phases["unload"] == "ok" and "pinned: stays loaded" in Path(boot.serial_log).read_text()
    else:
        assert boot.result == "fail" and boot.phases["unload"] == "fail", boot.reason
