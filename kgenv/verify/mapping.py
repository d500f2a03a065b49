"""Map symbols of a rebuilt object onto the running binary: by name, TU and section placement."""

from __future__ import annotations

import bisect
from functools import cached_property
from pathlib import Path

from kgenv.elf.reader import ET_REL
from kgenv.elf.relocs import Reloc, relocations
from kgenv.elf.symbols import (
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    Symbol,
    SymbolIndex,
)
from kgenv.errors import UserError
from kgenv.verify.sources import Binary

OK, MISSING, AMBIGUOUS = "ok", "missing", "ambiguous"


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
        return None, AMBIGUOUS
