"""Which translation units to rebuild: named ones, or a seeded sample of the shipped kernel's C units.

The population is the DWARF compile units of the shipped vmlinux and of every shipped module (the
C files really linked into each, as the build named them) that also exist as sources in the env's
prepared tree (generated units are left out). The lists are cached: the vmlinux's and the modules'
by build-id, the sources by the tree layer's sha256. A sample is stratified: vmlinux and module
units in proportion to their numbers, at least one of each.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from kgenv.build.target import VMLINUX, shipped_modules
from kgenv.env import modunits
from kgenv.errors import KgenvError, ToolError, UserError
from kgenv.fsutil import cache_dir, write_atomic
from kgenv.manifest import Manifest

ALL, MODULES = "all", "modules"
OBJECTS = (ALL, VMLINUX, MODULES)  # --objects: which shipped objects the sample is drawn from

# Built into vmlinux under another name or not by a plain `make path.o`:
# the EFI stub's objects are renamed (__efistub_ prefix) after compiling; boot/realmode are separate images.
EXCLUDE_PREFIXES = ("drivers/firmware/efi/libstub/", "arch/x86/boot/", "arch/x86/realmode/", "usr/")


def tu_of(path: str) -> str:
    """A TU target from 'fs/namei.c' or 'fs/namei.o'; refuses paths that leave the tree."""
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or p.suffix not in (".c", ".o") or not p.name[:-2]:
        raise UserError(f"{path}: not a translation unit path like fs/proc/cmdline.o")
    return str(p.with_suffix(".o"))


def compile_units(vmlinux: str, build_id: str) -> list[str]:
    """Relative names of the C compile units in vmlinux's DWARF (cached by build-id)."""
    cached = cache_dir() / "audit" / f"cus-{build_id or 'unknown'}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    try:
        with open(vmlinux, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                raise UserError(f"{vmlinux}: no DWARF; sampling needs the -dbg vmlinux")
            names = set()
            for cu in elf.get_dwarf_info(relocate_dwarf_sections=False).iter_CUs():
                attrs = cu.get_top_DIE().attributes
                name = _text(attrs.get("DW_AT_name"))
                if (
                    _text(attrs.get("DW_AT_producer")).startswith("GNU C")
                    and name.endswith(".c")
                    and not name.startswith(("/", "."))
                ):
                    names.add(name)
    except (OSError, ELFError) as e:
        raise UserError(f"{vmlinux}: cannot read compile units: {e}") from None
    out = sorted(names)
    write_atomic(cached, json.dumps(out))
    return out


def _text(attr) -> str:
    if attr is None or not isinstance(attr.value, bytes):
        return ""
    return attr.value.decode(errors="replace")


def tree_sources(runner, m: Manifest) -> set[str]:
    """The .c files of the prepared source tree (cached by the tree layer's sha256)."""
    cached = cache_dir() / "audit" / f"sources-{m.image.tree_sha256[:32]}.json"
    if cached.exists():
        return set(json.loads(cached.read_text()))
    r = runner.run("find . -path ./debian -prune -o -name '*.c' -type f -printf '%P\\n'")
    if r.exit_code:
        raise ToolError(f"{m.name}: cannot list the tree's sources: {r.output[-300:]}")
    found = sorted(line for line in r.output.splitlines() if line.endswith(".c"))
    write_atomic(cached, json.dumps(found))
    return set(found)


def population(vmlinux: str, m: Manifest, runner) -> list[str]:
    """Sorted TU targets the sample is drawn from."""
    sources = tree_sources(runner, m)
    return sorted(
        tu_of(c)
        for c in compile_units(vmlinux, m.kernel.build_id)
        if c in sources and not c.startswith(EXCLUDE_PREFIXES)
    )


def module_population(m: Manifest, sources: set[str], progress=None) -> tuple[dict[str, str], int, str]:
    """TU target -> module for every shipped module's C units in the tree, the number of modules
    they come from, and why there are none when there are none."""
    try:
        shipped = shipped_modules(m)
    except KgenvError as e:  # a vendor build dir snapshotted without its modules, say
        return {}, 0, f"no shipped modules ({str(e).splitlines()[0]})"
    mods, why = modunits.module_units(m, shipped, progress)
    out: dict[str, str] = {}
    for name in sorted(set(mods) & set(shipped)):
        for c in mods[name].get("units", []):
            if c in sources and not c.startswith(EXCLUDE_PREFIXES) and not c.endswith(".mod.c"):
                out.setdefault(tu_of(c), name)  # a unit linked into two modules is built once: either proves it
    return out, len(set(out.values())), why


@dataclass(frozen=True)
class Population:
    """The units a sample is drawn from, by shipped object."""

    vmlinux: list[str]  # sorted TU targets
    modules: dict[str, str] = field(default_factory=dict)  # TU target -> module name
    module_count: int = 0  # modules with at least one unit in the population
    note: str = ""  # why the modules are missing, when they are

    def object_of(self, tu: str) -> str:
        """vmlinux, the module's name, or "" for a unit of neither."""
        return self.modules.get(tu, VMLINUX if tu in self._vmlinux_set else "")

    @cached_property
    def _vmlinux_set(self) -> set[str]:
        return set(self.vmlinux)

    def size(self, objects: str = ALL) -> int:
        return (len(self.vmlinux) if objects != MODULES else 0) + (len(self.modules) if objects != VMLINUX else 0)

    def info(self, objects: str) -> dict[str, str | int]:
        """The sample record's population keys."""
        return {
            "population": self.size(objects),
            "objects": objects,
            "population_vmlinux": len(self.vmlinux) if objects != MODULES else 0,
            "population_modules": len(self.modules) if objects != VMLINUX else 0,
            "modules": self.module_count if objects != VMLINUX else 0,
            "note": self.note if objects != VMLINUX else "",
        }


def units(vmlinux: str, m: Manifest, runner, objects: str = ALL, progress=None) -> Population:
    """The population of `objects` (all, vmlinux or modules)."""
    if objects not in OBJECTS:
        raise UserError(f"--objects {objects}: one of {', '.join(OBJECTS)}")
    vm = population(vmlinux, m, runner) if objects != MODULES else []
    if objects == VMLINUX:
        return Population(vm)
    mods, count, why = module_population(m, tree_sources(runner, m), progress)
    if objects == ALL:  # a unit is in one object: vmlinux wins should both lists name it
        in_vmlinux = set(vm)
        mods = {tu: mod for tu, mod in mods.items() if tu not in in_vmlinux}
    if objects == MODULES and not mods:
        raise ToolError(f"{m.name}: no module units to sample ({why or 'none of them is in the tree'})")
    return Population(vm, mods, count, why)


def split(n: int, vmlinux: int, modules: int) -> tuple[int, int]:
    """(vmlinux TUs, module TUs) of a sample of n: proportional to the strata, at least one of each
    when both have units and n >= 2, never more than a stratum holds."""
    n = min(n, vmlinux + modules)
    if not modules or not vmlinux:
        return (n, 0) if vmlinux else (0, n)
    k = round(n * modules / (vmlinux + modules))
    if n >= 2:
        k = min(max(k, 1), n - 1)
    k = min(max(k, n - vmlinux), modules)
    return n - k, k


def choose_units(p: Population, n: int, seed: int, objects: str = ALL) -> list[str]:
    """n TUs of the population: the same ones for the same seed and population. The vmlinux stratum
    is drawn exactly as a vmlinux-only sample was (`choose`), the modules with their own generator."""
    if n <= 0:
        raise UserError(f"--sample {n}: give a positive number")
    vm = p.vmlinux if objects != MODULES else []
    mods = sorted(p.modules) if objects != VMLINUX else []
    if not vm and not mods:
        raise ToolError("no C units to sample from")
    kv, km = split(n, len(vm), len(mods))
    chosen = choose(vm, kv, seed) if kv else []
    chosen += random.Random(f"modules:{seed}").sample(mods, km) if km else []
    return sorted(chosen)


def choose(pop: list[str], n: int, seed: int) -> list[str]:
    """n TUs of the population, the same ones for the same seed and population."""
    if n <= 0:
        raise UserError(f"--sample {n}: give a positive number")
    if not pop:
        raise ToolError("no built-in C units to sample from")
    return sorted(random.Random(seed).sample(pop, min(n, len(pop))))
