"""Code sites the kernel rewrites at boot (alternatives, jump labels, ...), read from an object's tables."""

from __future__ import annotations

from kgenv.elf.relocs import relocations
from kgenv.verify.mapping import ObjectFile

# table section -> (entry size, offset of the site pointer, how to find the patched length)
TABLES = {
    ".altinstructions": (12, 0, ("byte", 10)),
    "__jump_table": (16, 0, ("fixed", 5)),
    ".static_call_sites": (8, 0, ("fixed", 5)),
    ".retpoline_sites": (4, 0, ("branch", 5)),
    ".return_sites": (4, 0, ("fixed", 5)),
    ".smp_locks": (4, 0, ("fixed", 1)),
    ".parainstructions": (16, 0, ("byte", 9)),
    "__mcount_loc": (8, 0, ("fixed", 5)),
}


def patch_sites(obj: ObjectFile) -> dict[tuple[int, int], tuple[int, str]]:
    """(code section index, offset) -> (length, table) for every boot-patched site of an object."""
    out: dict[tuple[int, int], tuple[int, str]] = {}
    elf = obj.index.elf
    for name, (entsize, field, (how, arg)) in TABLES.items():
        sec = elf.section(name)
        if sec is None:
            continue
        data = bytes(elf.section_data(sec))
        for r in relocations(elf, sec.index):
            if r.offset % entsize != field or not 0 <= r.sym < len(obj.index.symbols):
                continue
            target = obj.index.symbols[r.sym]
            key = (target.shndx, target.value + r.addend)
            out[key] = (_length(obj, key, data, r.offset - field, how, arg), name)
    return out


def _length(obj: ObjectFile, key, data: bytes, entry: int, how: str, arg: int) -> int:
    if how == "byte":
        return data[entry + arg] if entry + arg < len(data) else 5
    if how == "branch":  # a conditional jump to a thunk is 6 bytes (0f 8x rel32)
        sec = obj.index.elf.sections[key[0]] if 0 < key[0] < len(obj.index.elf.sections) else None
        if sec is not None and key[1] < sec.size:
            return 6 if obj.index.elf.section_data(sec)[key[1]] == 0x0F else arg
    return arg


def function_masks(sites: dict, shndx: int, start: int, size: int) -> dict[int, tuple[int, str]]:
    """The patched sites inside one function, as offsets from its start."""
    return {
        off - start: (min(length, start + size - off), table)
        for (sec, off), (length, table) in sites.items()
        if sec == shndx and start <= off < start + size
    }
