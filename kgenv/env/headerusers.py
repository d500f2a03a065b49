"""Which compile units of a shipped kernel use a header: the files each unit's DWARF line table names
(gcc lists every file a line, a declaration or a type of the unit comes from). Read once per kernel
from the `-dbg` vmlinux and the modules' DWARF, cached by build-id.

A unit that includes a header but uses nothing from it is not listed, and is not affected by a change
to the header's code or types. A change to a macro is invisible here: callers refuse those first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError

from kgenv.elf.dwarfunits import UNREADABLE, unit_files
from kgenv.env import modunits
from kgenv.errors import ToolError
from kgenv.fsutil import cache_dir, write_atomic
from kgenv.manifest import Manifest

FORMAT = 1
VMLINUX = "vmlinux"


@dataclass(frozen=True)
class User:
    obj: str  # "vmlinux" or a module name
    tu: str  # fs/proc/version.o


class Index:
    """object -> unit (.c) -> the files its line table names."""

    def __init__(self, units: dict[str, dict[str, list[str]]]):
        self.units = units

    def users(self, header: str) -> list[User]:
        """Every unit whose line table names the header (or whose line table could not be read).
        ToolError when a unit's debug info could not be read at all: its users are unknown."""
        unread = sorted(obj for obj, units in self.units.items() if UNREADABLE in units)
        if unread:
            raise ToolError(f"a unit's debug info in {', '.join(unread[:3])} is unreadable: its headers are unknown")
        return [
            User(obj, str(PurePosixPath(unit).with_suffix(".o")))
            for obj, units in sorted(self.units.items())
            for unit, files in sorted(units.items())
            if header in files or UNREADABLE in files
        ]


def index(m: Manifest, shipped: dict[str, Path], progress=None) -> Index:
    """The kernel's units and their files: vmlinux's (cached here) and the modules' (modunits' cache).
    ToolError when the modules' DWARF cannot be found: a header's users would be incomplete."""
    mods, why = modunits.module_units(m, shipped, progress)
    if why:
        raise ToolError(f"env {m.name}: cannot find the units that use a header: {why}")
    missing = sorted(set(shipped) - set(mods))
    if missing:
        raise ToolError(f"env {m.name}: no debug info for module(s) {', '.join(missing[:5])}: header users unknown")
    units = {name: rec.get("files", {}) for name, rec in mods.items()}
    units[VMLINUX] = _vmlinux_units(m, progress)
    return Index(units)


def _vmlinux_units(m: Manifest, progress) -> dict[str, list[str]]:
    cached = cache_dir() / "headers" / f"vmlinux-{m.kernel.build_id or 'unknown'}.json"
    try:
        doc = json.loads(cached.read_text())
        if isinstance(doc, dict) and doc.get("format") == FORMAT and isinstance(doc.get("units"), dict):
            return doc["units"]
    except (OSError, ValueError):
        pass
    vmlinux = m.file("vmlinux")
    if progress:
        progress.step(f"read the header lists of {vmlinux.name}'s units (once per kernel)")
    try:
        files = unit_files(vmlinux.read_bytes())
    except (OSError, ELFError) as e:
        raise ToolError(f"{vmlinux}: cannot read its DWARF: {e}") from None
    if not files:
        raise ToolError(f"{vmlinux}: no DWARF compile units; a header's users need the -dbg vmlinux")
    units = {u: [f for f in fs if f != u] for u, fs in sorted(files.items())}
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, json.dumps({"format": FORMAT, "units": units}, sort_keys=True))
    return units
