"""Boot proof: boot the shipped kernel under QEMU with a livepatch module and prove it works."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path

from kgenv.boot import markers, payload, qemu
from kgenv.boot.markers import Marker
from kgenv.boot.module import livepatch_name
from kgenv.boot.record import PHASES, TIMINGS, Boot
from kgenv.boot.verdict import decide
from kgenv.errors import ToolError, UserError
from kgenv.fsutil import cache_dir

__all__ = ["Boot", "PHASES", "TIMINGS", "boot_test", "log_dir"]

DEFAULT_TIMEOUT = 90.0
CHECK_TIMEOUT = 10


def log_dir() -> Path:
    """Where serial logs are kept after the temporary files are gone: in kgenv's cache."""
    return cache_dir() / "boot-logs"


def _existing(path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    return p


def _read_sympos(sympos) -> str:
    """The expected-sympos list: a path, or the text itself (lines "objname funcname sympos [offset]")."""
    if sympos is None:
        return ""
    if isinstance(sympos, Path):
        return _existing(sympos, "sympos list").read_text()
    return str(sympos)


KEEP_LOGS = 50


def _default_log(name: str) -> Path:
    """A new log in the cache; only the newest KEEP_LOGS are kept there."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    d = log_dir()
    d.mkdir(parents=True, exist_ok=True)
    old = sorted(d.glob("*.log"), key=lambda p: p.stat().st_mtime)[: -KEEP_LOGS + 1]
    for path in old:
        path.unlink(missing_ok=True)
    return d / f"{name}-{stamp}-{os.getpid()}.log"


def _workdir(serial_log: Path, keep: bool) -> Path:
    """Scratch space; with keep=True it sits beside the serial log as <log>.d and stays."""
    if not keep:
        return Path(tempfile.mkdtemp(prefix="kgenv-boot-"))
    d = serial_log.with_suffix(".d")
    d.mkdir(parents=True, exist_ok=True)
    return d


def boot_test(
    module,
    kernel,
    *,
    check=None,
    sympos=None,
    timeout: float = DEFAULT_TIMEOUT,
    transition_timeout: int | None = None,
    serial_log=None,
    keep_tmp: bool = False,
    progress: Callable[[Marker, float], None] | None = None,
    busybox: str | None = None,
    memory_mb: int = 512,
    cpus: int = 1,
    targets: Sequence[str | Path] = (),
    optional: Collection[str | Path] = (),
    pinned: bool = False,
) -> Boot:
    """Boot `kernel` with `module` in a busybox initramfs and return the Boot record.

    `targets` are shipped modules the patch applies to, loaded before it (dependencies first);
    the guest goes on when one of those also in `optional` (a softdep's module) fails to load.
    `pinned`: the module pins itself once enabled, so the unload phase proves rmmod is refused.
    Raises UserError/ToolError for bad input or a missing QEMU/busybox; a patch that does not
    load, transition, pass its check or revert is a Boot with result "fail", never an exception.
    """
    module, kernel = _existing(module, "module"), _existing(kernel, "kernel image")
    check = _existing(check, "check script") if check is not None else None
    name = livepatch_name(module)
    qemu_bin, bb = qemu.find_qemu(), payload.find_busybox(busybox)
    if transition_timeout is None:
        transition_timeout = max(2, min(15, int(timeout / 4)))
    serial_log = Path(serial_log) if serial_log else _default_log(name)
    tmp = _workdir(serial_log, keep_tmp)
    try:
        initrd = payload.build(
            tmp / "initramfs.cpio",
            module=module,
            name=name,
            busybox=bb,
            check=check,
            sympos=_read_sympos(sympos),
            transition_timeout=transition_timeout,
            check_timeout=CHECK_TIMEOUT,
            targets=[_existing(t, "target module") for t in targets],
            optional={Path(t) for t in optional},
            pinned=pinned,
        )
        cmd = qemu.command(qemu_bin, kernel, initrd, serial_log, memory_mb=memory_mb, cpus=cpus)
        if keep_tmp:  # enough to re-run the same boot by hand
            (tmp / "qemu-command").write_text(shlex.join(cmd) + "\n")
        seen: dict[str, float] = {}
        stream, start = markers.Stream(), time.monotonic()

        def on_output(chunk: bytes) -> None:
            for m in stream.feed(chunk):
                key = m.get("name") if m.kind == "phase" else m.kind
                seen.setdefault(key, time.monotonic() - start)
                if progress:
                    progress(m, time.monotonic() - start)

        run = qemu.run(cmd, serial_log, timeout, on_output)
        text = markers.decode(serial_log.read_bytes())
        if not text.strip() and not run.timed_out and run.returncode:
            raise ToolError(f"QEMU failed (exit {run.returncode}): {run.stderr or 'no message'}")
        return decide(markers.parse(text), run, timeout=timeout, module=name, kernel=str(kernel), seen=seen)
    finally:
        if not keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
