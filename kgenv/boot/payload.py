"""Assemble the guest initramfs: busybox, the guest /init, the module, the check and the sympos list."""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from kgenv.boot.initramfs import Archive
from kgenv.errors import ToolError, UserError

# kernel/guest/init lives in the source tree next to the package.
GUEST_INIT = Path(__file__).resolve().parents[2] / "kernel" / "guest" / "init"


def find_busybox(path: str | None = None) -> Path:
    """A static busybox: the guest has no libc, so a dynamic one would not start."""
    candidate = path or os.environ.get("KGENV_BUSYBOX") or "/bin/busybox"
    found = shutil.which(candidate) if os.sep not in candidate else candidate
    if not found or not Path(found).is_file():
        raise ToolError(f"busybox not found at {candidate}: install the busybox-static package")
    if _is_dynamic(Path(found)):
        raise ToolError(f"{found} is dynamically linked: install busybox-static")
    return Path(found)


def _is_dynamic(path: Path) -> bool:
    """True when the ELF file asks for a program interpreter (a dynamic loader)."""
    try:
        with open(path, "rb") as f:
            return any(seg["p_type"] == "PT_INTERP" for seg in ELFFile(f).iter_segments())
    except ELFError as e:
        raise ToolError(f"{path}: not an ELF executable ({e})") from e


def env_file(name: str, has_check: bool, transition_timeout: int, check_timeout: int, pinned: bool = False) -> bytes:
    """Shell assignments the guest /init sources."""
    return (
        f"NAME={name}\nHAS_CHECK={int(has_check)}\n"
        f"TRANSITION_TIMEOUT={transition_timeout}\nCHECK_TIMEOUT={check_timeout}\nPINNED={int(pinned)}\n"
    ).encode()


def target_member(n: int, ko: Path, optional: bool) -> str:
    """The archive name of the n-th module the guest loads first; an optional one (only a softdep
    asks for it) ends in .optional.ko, and the guest goes on when it fails to load."""
    stem = ko.name.removesuffix(".ko")
    return f"kgenv/target/{n:03d}-{stem}{'.optional' if optional else ''}.ko"


def build(
    dest: Path,
    *,
    module: Path,
    name: str,
    busybox: Path,
    check: Path | None,
    sympos: str,
    transition_timeout: int,
    check_timeout: int,
    targets: Sequence[Path] = (),
    optional: Collection[Path] = (),
    guest_init: Path = GUEST_INIT,
    pinned: bool = False,
) -> Path:
    """Write the initramfs (uncompressed: unpacking gzip under TCG costs more than it saves)."""
    if not guest_init.is_file():
        raise UserError(f"guest init script missing: {guest_init}")
    a = Archive()
    for d in ("dev", "proc", "sys", "tmp", "kgenv"):
        a.add_dir(d)
    a.add_char_device("dev/console", 5, 1)
    a.add_char_device("dev/null", 1, 3, 0o666)
    a.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    a.add_symlink("bin/sh", "busybox")
    a.add_file("init", guest_init.read_bytes(), 0o755)
    a.add_file("kgenv/env", env_file(name, check is not None, transition_timeout, check_timeout, pinned))
    a.add_file("kgenv/module.ko", Path(module).read_bytes())
    a.add_file("kgenv/check", Path(check).read_bytes() if check else b"", 0o755)
    a.add_file("kgenv/sympos", sympos.encode())
    if targets:
        a.add_dir("kgenv/target")
    for n, ko in enumerate(targets):  # numbered: the guest loads them in this (glob) order
        a.add_file(target_member(n, Path(ko), Path(ko) in optional), Path(ko).read_bytes())
    return a.write(dest)
