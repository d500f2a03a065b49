"""Read what the boot test needs from a kernel module file: its .modinfo fields."""

from __future__ import annotations

from pathlib import Path

from kgenv.elf.reader import open_elf
from kgenv.errors import UserError


def modinfo_entries(path: Path) -> list[tuple[str, str]]:
    """Every key=value string of the .modinfo section, in order (alias= and softdep= repeat)."""
    try:
        elf = open_elf(path)
    except UserError as e:
        raise UserError(f"{path}: not a readable kernel module ({e})") from None
    try:
        sec = elf.section(".modinfo")
        if sec is None:
            raise UserError(f"{path}: no .modinfo section, not a kernel module")
        data = bytes(elf.section_data(sec))
    finally:
        elf.close()
    out = []
    for item in data.split(b"\0"):
        key, eq, value = item.decode("utf-8", "replace").partition("=")
        if eq:
            out.append((key, value))
    return out


def modinfo(path: Path) -> dict[str, str]:
    """The key=value strings of the .modinfo section (first value wins)."""
    info: dict[str, str] = {}
    for key, value in modinfo_entries(path):
        info.setdefault(key, value)
    return info


def livepatch_name(path: Path) -> str:
    """The name under /sys/kernel/livepatch/: the module's name, with '-' as '_'."""
    info = modinfo(path)
    if info.get("livepatch") != "Y":
        raise UserError(f"{path}: not a livepatch module (no livepatch=Y in .modinfo)")
    name = info.get("name") or Path(path).name.removesuffix(".ko")
    return name.replace("-", "_")
