"""Run qemu-system-x86_64 (TCG) on a kernel and initramfs with a hard timeout, keeping the serial log."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kgenv.errors import ToolError

QEMU = "qemu-system-x86_64"
# Kernel options: console on the first serial port; any oops or panic ends the VM at once
# (panic=-1 reboots immediately, -no-reboot turns that into a QEMU exit).
CMDLINE = "console=ttyS0,115200 panic=-1 oops=panic rdinit=/init"


@dataclass(frozen=True)
class Run:
    """How one QEMU process ended."""

    returncode: int | None  # None when killed at the timeout
    timed_out: bool
    seconds: float
    serial_log: Path
    stderr: str


def find_qemu(name: str | None = None) -> str:
    """The QEMU binary to use, or a ToolError saying how to get one."""
    path = shutil.which(name or os.environ.get("KGENV_QEMU", QEMU))
    if not path:
        raise ToolError(f"{name or QEMU} not found: install the qemu-system-x86 package")
    return path


def command(
    qemu: str, kernel: Path, initrd: Path, serial_log: Path, *, memory_mb: int = 512, cpus: int = 1, append: str = ""
) -> list[str]:
    """The QEMU argument list: software emulation, no devices beyond a serial port."""
    return [
        qemu,
        "-accel",
        "tcg",
        "-nodefaults",
        "-no-user-config",
        "-machine",
        "pc",
        "-m",
        str(memory_mb),
        "-smp",
        str(cpus),
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{serial_log}",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        f"{CMDLINE} {append}".strip(),
    ]


def _stop(proc: subprocess.Popen) -> None:
    """TERM then KILL the whole process group, so nothing QEMU started lingers."""
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run(
    cmd: list[str],
    serial_log: Path,
    timeout: float,
    on_output: Callable[[bytes], None] | None = None,
    poll: float = 0.1,
) -> Run:
    """Run QEMU until it exits or `timeout` seconds pass; feed new serial bytes to on_output."""
    serial_log = Path(serial_log)
    serial_log.write_bytes(b"")
    err_path = serial_log.with_suffix(".qemu-stderr")
    start = time.monotonic()
    with open(err_path, "wb") as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        except OSError as e:
            raise ToolError(f"cannot start {cmd[0]}: {e}") from e
        timed_out = False
        with open(serial_log, "rb") as log:
            try:
                while True:
                    code = proc.poll()
                    chunk = log.read()
                    if chunk and on_output:
                        on_output(chunk)
                    if code is not None:
                        break
                    if time.monotonic() - start >= timeout:
                        timed_out = True
                        _stop(proc)
                        break
                    time.sleep(poll)
                rest = log.read()
                if rest and on_output:
                    on_output(rest)
            finally:
                if proc.poll() is None:  # interrupted (Ctrl-C): never leave QEMU behind
                    _stop(proc)
    stderr = err_path.read_text(errors="replace").strip()
    err_path.unlink(missing_ok=True)
    return Run(None if timed_out else proc.returncode, timed_out, time.monotonic() - start, serial_log, stderr)
