"""Map symbols of a rebuilt object onto the running binary: by name, TU and section placement."""

from __future__ import annotations

import bisect
from functools import cached_property
from pathlib import Path

from kgenv.elf.reader import ET_REL
from kgenv.elf.relocs import R_X86_64_32, R_X86_64_32S, R_X86_64_PC32, R_X86_64_PLT32, Reloc, relocations
from kgenv.elf.symbols import (
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    Symbol,
    SymbolIndex,
)
from kgenv.errors import UserError
from kgenv.verify.sources import Binary

OK, MISSING, AMBIGUOUS = "ok", "missing", "ambiguous"
# relocation types a static is reached by, and what the field adds to S + A to reach it
_REACH = {R_X86_64_PC32: 4, R_X86_64_PLT32: 4, R_X86_64_32S: 0, R_X86_64_32: 0}


class ObjectFile:
    """A rebuilt relocatable object: its symbols and per-section relocations."""

    def __init__(self, path: str | Path, tu: str | None = None):
        self.index = SymbolIndex.open(path)
        if self.index.elf.type != ET_REL:
            raise UserError(f"{path}: not a relocatable object (.o)")
        self.path = str(path)
        self.tu = tu or str(path)
        files = [s.name for s in self.index.symbols if s.type == STT_FILE]
        self.file = files[0] if files else ""
        self._relocs: dict[int, tuple[list[int], list[Reloc]]] = {}

    def functions(self) -> list[Symbol]:
        """Defined functions with code, in symbol-table order."""
        return [s for s in self.index.symbols if s.type == STT_FUNC and s.defined and s.size > 0 and s.shndx < 0xFF00]

    def relocs(self, shndx: int) -> tuple[list[int], list[Reloc]]:
        if shndx not in self._relocs:
            rel = relocations(self.index.elf, shndx)
            self._relocs[shndx] = ([r.offset for r in rel], rel)
        return self._relocs[shndx]

    def relocs_in(self, sym: Symbol) -> list[Reloc]:
        """Relocations whose site lies inside a function."""
        offs, rel = self.relocs(sym.shndx)
        lo = bisect.bisect_left(offs, sym.value)
        hi = bisect.bisect_left(offs, sym.value + sym.size)
        return rel[lo:hi]

    def symbol(self, i: int) -> Symbol:
        if not 0 <= i < len(self.index.symbols):
            raise UserError(f"{self.path}: relocation names symbol {i}, past the symbol table")
        return self.index.symbols[i]


class Mapper:
    """Finds the binary's copy of an object symbol; locals are pinned to the object's TU."""

    def __init__(self, obj: ObjectFile, binary: Binary):
        self.obj = obj
        self.binary = binary
        self._bases: dict[int, tuple | None] = {}
        self._pinning: set[int] = set()  # statics being pinned by reference (guards against cycles)

    @cached_property
    def tu_group(self) -> int | None:
        """The binary's STT_FILE group of this object: by file name, then by shared local names."""
        groups = self.binary.groups_named(self.obj.file) if self.obj.file else []
        if len(groups) <= 1:
            return groups[0] if groups else None
        mine = {
            s.name
            for s in self.obj.index.symbols
            if s.bind == STB_LOCAL and s.type in (STT_FUNC, STT_OBJECT) and s.name
        }
        scores = sorted(((len(mine & self.binary.group_names(g)), g) for g in groups), reverse=True)
        if scores[0][0] and scores[0][0] > scores[1][0]:
            return scores[0][1]
        return None

    def _key(self, sym: Symbol):
        return (sym.shndx if not self.binary.linked else None, sym.value)

    def base(self, shndx: int) -> tuple | None:
        """Where the object's section `shndx` starts in the binary, from an unambiguous anchor."""
        if shndx not in self._bases:
            self._bases[shndx] = None
            # weak definitions may have been replaced elsewhere: never anchor on them
            anchors = sorted(
                (
                    s
                    for s in self.obj.index.symbols
                    if s.shndx == shndx
                    and s.name
                    and s.defined
                    and s.bind != STB_WEAK
                    and s.type in (STT_FUNC, STT_OBJECT, STT_NOTYPE)
                ),
                key=lambda s: s.bind == STB_LOCAL,
            )
            for anchor in anchors[:64]:
                found, status = self._by_name(anchor, use_base=False)
                if status == OK and found is not None:
                    self._bases[shndx] = (found.shndx if not self.binary.linked else None, found.value - anchor.value)
                    break
        return self._bases[shndx]

    def resolve(self, sym: Symbol) -> tuple[Symbol | None, str]:
        """(binary symbol, status) for an object symbol; status is ok, missing or ambiguous."""
        return self._by_name(sym, use_base=True)

    def _by_name(self, sym: Symbol, use_base: bool) -> tuple[Symbol | None, str]:
        cands = self.binary.lookup(sym.name)
        if sym.type == STT_FUNC:
            cands = [c for c in cands if c.type == STT_FUNC] or cands
        if sym.bind != STB_LOCAL or not sym.defined:
            glob = [c for c in cands if c.bind != STB_LOCAL]
            if len(glob) == 1:
                return glob[0], OK
            if not glob:
                return (cands[0], OK) if len(cands) == 1 and not sym.defined else (None, MISSING)
            return None, AMBIGUOUS
        return self._local(sym, [c for c in cands if c.bind == STB_LOCAL], use_base)

    def _local(self, sym: Symbol, cands: list[Symbol], use_base: bool) -> tuple[Symbol | None, str]:
        if not cands:
            return None, MISSING
        group = self.tu_group
        if group is not None:
            mine = [c for c in cands if c.file_group == group]
            if len(mine) == 1:
                return mine[0], OK
        if use_base and sym.defined:
            base = self.base(sym.shndx)
            if base is not None:
                want = (base[0], base[1] + sym.value)
                exact = [c for c in cands if self._key(c) == want]
                if len(exact) == 1:
                    return exact[0], OK
        if group is not None:
            return None, MISSING  # our TU has no copy: a same-named static elsewhere is not ours
        if len(cands) == 1:
            return cands[0], OK
        if use_base and sym.defined and sym.type == STT_FUNC:
            pinned = self._by_reference(sym, cands)
            if pinned is not None:
                return pinned, OK
        return None, AMBIGUOUS

    @cached_property
    def _callers(self) -> dict[tuple[int, int], list[tuple[Symbol, Reloc]]]:
        """(section, offset) a call/jump/lea of the object reaches -> the functions and relocations that do."""
        out: dict[tuple[int, int], list[tuple[Symbol, Reloc]]] = {}
        for f in self.obj.functions():
            for r in self.obj.relocs_in(f):
                if r.type not in _REACH:
                    continue
                t = self.obj.symbol(r.sym)
                if t.defined and t.type in (STT_FUNC, STT_SECTION):
                    # a call/jump/lea field ends its instruction (S + A + 4); `mov $fn` holds S + A
                    out.setdefault((t.shndx, t.value + r.addend + _REACH[r.type]), []).append((f, r))
        return out

    def _by_reference(self, sym: Symbol, cands: list[Symbol]) -> Symbol | None:
        """Pin a static with several same-named copies by where a resolved function of the object reaches it.

        A module's symbol table has no STT_FILE names, and with -ffunction-sections a static is alone in
        its section; but a caller that resolves calls it, and the binary says which copy that call reaches.
        """
        if sym.symidx in self._pinning:
            return None
        self._pinning.add(sym.symidx)
        try:
            for f, r in self._callers.get((sym.shndx, sym.value), []):
                if f.symidx == sym.symidx:
                    continue
                found, status = self._by_name(f, use_base=True)
                if status != OK or found is None or found.size != f.size:
                    continue
                target = self._reached(found, r.offset - f.value, r.type)
                hits = [c for c in cands if target is not None and self._key(c) == target]
                if len(hits) == 1:
                    return hits[0]
        finally:
            self._pinning.discard(sym.symidx)
        return None

    def _reached(self, caller: Symbol, off: int, rtype: int) -> tuple[int | None, int] | None:
        """(section, offset) the binary's copy of a caller reaches through the 4-byte field at `off`."""
        b = self.binary
        if not b.linked:
            rel = [r for r in b.relocs_in(caller) if r.offset == caller.value + off]
            if rel:
                t = b.index.symbols[rel[0].sym] if 0 <= rel[0].sym < len(b.index.symbols) else None
                if t is None or not t.defined or rel[0].type != rtype:
                    return None
                return (t.shndx, t.value + rel[0].addend + _REACH[rtype])
            if rtype not in (R_X86_64_PC32, R_X86_64_PLT32):
                return None  # an absolute address in a module always keeps its relocation
        field = b.code(caller, off + 4)
        if field is None or len(field) < off + 4:
            return None
        value = int.from_bytes(field[off : off + 4], "little", signed=rtype != R_X86_64_32)
        if rtype in (R_X86_64_PC32, R_X86_64_PLT32):
            return (caller.shndx if not b.linked else None, caller.value + off + 4 + value)
        return (None, value & 0xFFFFFFFFFFFFFFFF)
