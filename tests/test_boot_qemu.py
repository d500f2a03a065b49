"""The QEMU runner (with a stand-in QEMU: no boot) and the guest /init's syntax."""

import stat
import subprocess
import time
from pathlib import Path

import pytest

from kgenv.boot import payload, qemu
from kgenv.errors import ToolError

REPO = Path(__file__).resolve().parents[1]

# Writes to the serial file like a guest would, then hangs, with a child that would outlive a
# careless kill.
FAKE = """#!/bin/sh
for a in "$@"; do case $a in file:*) log=${a#file:};; esac; done
printf 'KGENV:phase name=init status=ok t=1.0 :KGENV\\n' >> "$log"
sleep 300 &
echo $! > "$log.child"
wait
"""


def _fake(tmp_path: Path) -> Path:
    exe = tmp_path / "fake-qemu"
    exe.write_text(FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_timeout_kills_qemu_and_its_children(tmp_path):
    log = tmp_path / "serial.log"
    chunks = []
    r = qemu.run([str(_fake(tmp_path)), "-serial", f"file:{log}"], log, timeout=1.5, on_output=chunks.append)
    assert r.timed_out and r.returncode is None  # stopped at the timeout, not when `sleep 300` ended
    assert b"KGENV:phase name=init" in b"".join(chunks)
    child = int(Path(f"{log}.child").read_text())
    time.sleep(0.2)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper that may never come in a container."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_exit_code_and_stderr_kept(tmp_path):
    log = tmp_path / "serial.log"
    r = qemu.run(["sh", "-c", "echo bad option >&2; exit 3"], log, timeout=10)
    assert not r.timed_out and r.returncode == 3 and r.stderr == "bad option"


def test_missing_qemu_is_a_tool_error():
    with pytest.raises(ToolError, match="qemu-system-x86"):
        qemu.find_qemu("no-such-qemu-binary")


def test_command_uses_tcg_and_never_reboots(tmp_path):
    cmd = qemu.command("qemu", Path("vmlinuz"), Path("initrd"), tmp_path / "s.log")
    assert cmd[cmd.index("-accel") + 1] == "tcg"
    assert "-no-reboot" in cmd
    append = cmd[cmd.index("-append") + 1]
    assert "console=ttyS0" in append and "panic=-1" in append


def test_guest_init_is_valid_busybox_sh():
    busybox = payload.find_busybox()
    subprocess.run([str(busybox), "sh", "-n", str(REPO / "kernel/guest/init")], check=True)


def test_initramfs_holds_everything_the_guest_needs(tmp_path):
    ko, check = tmp_path / "m.ko", tmp_path / "check"
    ko.write_bytes(b"\x7fELF module")
    check.write_text("true\n")
    path = payload.build(
        tmp_path / "i.cpio",
        module=ko,
        name="m",
        busybox=payload.find_busybox(),
        check=check,
        sympos="vmlinux f 0\n",
        transition_timeout=5,
        check_timeout=3,
    )
    names = subprocess.run(["cpio", "-t", "-F", str(path)], capture_output=True, text=True, check=True).stdout.split()
    for need in (
        "init",
        "bin/busybox",
        "bin/sh",
        "dev/console",
        "kgenv/env",
        "kgenv/module.ko",
        "kgenv/check",
        "kgenv/sympos",
    ):
        assert need in names
