"""Which translation units to rebuild: named ones, or a seeded sample of the shipped vmlinux's built-in C units.

The population is the vmlinux's DWARF compile units (the C files really linked in, as the build
named them) that also exist as sources in the env's prepared tree (generated units are left out).
Both lists are cached: the first by build-id, the second by the tree layer's sha256.
"""

from __future__ import annotations

import json
import random
from pathlib import PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from kgenv.errors import ToolError, UserError
from kgenv.fsutil import cache_dir, write_atomic
from kgenv.manifest import Manifest

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


def choose(pop: list[str], n: int, seed: int) -> list[str]:
    """n TUs of the population, the same ones for the same seed and population."""
    if n <= 0:
        raise UserError(f"--sample {n}: give a positive number")
    if not pop:
        raise ToolError("no built-in C units to sample from")
    return sorted(random.Random(seed).sample(pop, min(n, len(pop))))
