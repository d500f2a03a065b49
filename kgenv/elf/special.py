"""The kernel's special sections of a relocatable object, split into entries about code.

Each table below holds fixed-size entries whose first field points at the instruction the entry
is about (a static branch, an alternative, a faulting access, a static call, a paravirt site); the
rest of the entry is its payload (the key, the fixup, the feature bit, the replacement). Layouts
are those of Linux 6.1 on x86-64:

- `__jump_table`: struct jump_entry {s32 code, s32 target; long key} (`.long 1b - .`,
  `.long l_yes - .`, `.quad key + branch - .`), 16 bytes
- `.altinstructions`: struct alt_instr {s32 instr_offset, repl_offset; u16 cpuid; u8 instrlen,
  replacementlen} __packed, 12 bytes; the replacement lies in `.altinstr_replacement`
- `__ex_table`: struct exception_table_entry {int insn, fixup, data}, 12 bytes
- `.static_call_sites`: struct static_call_site {s32 addr, key} (key's low bits: tail/init flags)
- `.parainstructions`: struct paravirt_patch_site {u8 *instr; u8 type, len}: 16-byte stride, the
  last entry 10 bytes (each entry is `.balign 8` first)

`__bug_table` (line numbers) and the objtool position lists (`.retpoline_sites`, `.return_sites`,
`.call_sites`, `__mcount_loc`, `.orc_unwind_ip`: a position and nothing else) are not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from kgenv.elf.relocs import Reloc, relocations
from kgenv.elf.symbols import SymbolIndex


@dataclass(frozen=True)
class TableLayout:
    """One table: its entry stride, the code field (offset 0 in all of them) and named fields."""

    section: str
    entsize: int
    last_size: int = 0  # a shorter last entry (alignment padding only between entries), 0: none
    fields: tuple[tuple[str, int, int], ...] = ()  # (name, offset, width) of the payload fields
    padding: tuple[tuple[int, int], ...] = ()  # (offset, width) of bytes that carry nothing

    def field(self, name: str) -> tuple[int, int]:
        for fname, off, width in self.fields:
            if fname == name:
                return off, width
        raise KeyError(name)


JUMP_TABLE = TableLayout("__jump_table", 16, fields=(("target", 4, 4), ("key", 8, 8)))
ALTINSTRUCTIONS = TableLayout(
    ".altinstructions",
    12,
    fields=(("repl", 4, 4), ("cpuid", 8, 2), ("instrlen", 10, 1), ("replacementlen", 11, 1)),
)
ALT_REPLACEMENT = ".altinstr_replacement"
EX_TABLE = TableLayout("__ex_table", 12, fields=(("fixup", 4, 4), ("data", 8, 4)))
STATIC_CALL_SITES = TableLayout(".static_call_sites", 8, fields=(("key", 4, 4),))
PARAINSTRUCTIONS = TableLayout(
    ".parainstructions", 16, last_size=10, fields=(("type", 8, 1), ("len", 9, 1)), padding=((10, 6),)
)
LAYOUTS = (JUMP_TABLE, ALTINSTRUCTIONS, EX_TABLE, STATIC_CALL_SITES, PARAINSTRUCTIONS)


class TableEntry(NamedTuple):
    """One entry: where it is, its bytes (padding zeroed), its relocations relative to the entry,
    and (section index, offset) of the code its first field points at (None if not understood)."""

    section: str
    offset: int
    data: bytes
    relocs: tuple[Reloc, ...]
    code: tuple[int, int] | None
    regular: bool  # False: the table did not have the layout; `data` is the raw chunk


def points_at(index: SymbolIndex, r: Reloc) -> tuple[int, int] | None:
    """(section index, offset) a `.long sym - .`/`.quad sym` field points at (S + A), if defined."""
    if not 0 <= r.sym < len(index.symbols):
        return None
    sym = index.symbols[r.sym]
    if not sym.defined or not 0 < sym.shndx < len(index.elf.sections):
        return None
    return sym.shndx, sym.value + r.addend


def code_at(index: SymbolIndex, r: Reloc | None) -> tuple[int, int] | None:
    """Like points_at, only when the place is in an executable section."""
    if r is None:
        return None
    where = points_at(index, r)
    if where is None or not index.elf.sections[where[0]].is_exec:
        return None
    return where


def table_entries(index: SymbolIndex, layout: TableLayout) -> list[TableEntry]:
    """Every entry of the table's sections in this object.

    A table whose size or first fields do not fit the layout is split at each relocation that
    points at code instead, every chunk kept whole (`regular` False): unknown means compared in full.
    """
    out: list[TableEntry] = []
    for sec in index.elf.sections:
        if sec.name != layout.section or not sec.size:
            continue
        data = bytes(index.elf.section_data(sec))
        relocs = relocations(index.elf, sec.index)
        entries = _regular(index, layout, sec.name, data, relocs)
        out += entries if entries is not None else _chunks(index, sec.name, data, relocs)
    return out


def _regular(index: SymbolIndex, layout: TableLayout, name: str, data: bytes, relocs: list[Reloc]):
    size = len(data)
    n, rest = divmod(size, layout.entsize)
    if rest and (not layout.last_size or rest != layout.last_size):
        return None
    starts = list(range(0, size, layout.entsize))
    by_offset = {r.offset: r for r in relocs}
    out = []
    for k, start in enumerate(starts):
        end = min(start + layout.entsize, size)
        code = code_at(index, by_offset.get(start))
        if code is None:
            return None
        raw = bytearray(data[start:end])
        if k < n:  # a shorter last entry has no padding
            for off, width in layout.padding:
                raw[off : off + width] = bytes(width)
        own = tuple(r._replace(offset=r.offset - start) for r in relocs if start <= r.offset < end)
        out.append(TableEntry(name, start, bytes(raw), own, code, True))
    return out


def _chunks(index: SymbolIndex, name: str, data: bytes, relocs: list[Reloc]) -> list[TableEntry]:
    heads = [(r.offset, code) for r in relocs if (code := code_at(index, r)) is not None]
    heads = sorted(dict(heads).items())
    ends = [off for off, _ in heads[1:]] + [len(data)]
    return [
        TableEntry(
            name,
            start,
            data[start:end],
            tuple(r._replace(offset=r.offset - start) for r in relocs if start <= r.offset < end),
            code,
            False,
        )
        for (start, code), end in zip(heads, ends, strict=True)
    ]
