"""Read what the boot test needs from a kernel module file: its .modinfo fields."""

from __future__ import annotations

from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from kgenv.errors import UserError


def modinfo(path: Path) -> dict[str, str]:
    """The key=value strings of the .modinfo section (first value wins)."""
    try:
        with open(path, "rb") as f:
            section = ELFFile(f).get_section_by_name(".modinfo")
            data = section.data() if section else None
    except (OSError, ELFError) as e:
        raise UserError(f"{path}: not a readable kernel module ({e})") from e
    if data is None:
        raise UserError(f"{path}: no .modinfo section, not a kernel module")
    info: dict[str, str] = {}
    for item in data.split(b"\0"):
        key, eq, value = item.decode("utf-8", "replace").partition("=")
        if eq:
            info.setdefault(key, value)
    return info


def livepatch_name(path: Path) -> str:
    """The name under /sys/kernel/livepatch/: the module's name, with '-' as '_'."""
    info = modinfo(path)
    if info.get("livepatch") != "Y":
        raise UserError(f"{path}: not a livepatch module (no livepatch=Y in .modinfo)")
    name = info.get("name") or Path(path).name.removesuffix(".ko")
    return name.replace("-", "_")
