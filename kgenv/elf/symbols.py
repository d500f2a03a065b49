"""Fast symbol index of an ELF64 x86-64 file: names, addresses, sizes, sections, TU, sympos."""

from __future__ import annotations

import bisect
import struct
from pathlib import Path
from typing import NamedTuple

from kgenv.elf.reader import (
    SHN_ABS,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_SYMTAB,
    ElfFile,
    Section,
    open_elf,
)

STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
BIND_NAMES = {STB_LOCAL: "local", STB_GLOBAL: "global", STB_WEAK: "weak"}
_SYM = struct.Struct("<IBBHQQ")


class Symbol(NamedTuple):
    """One symbol-table entry, with the context a verifier needs (a tuple: cheap to build 100 k)."""

    symidx: int  # its index in the symbol table (NamedTuple already has an index() method)
    name: str
    value: int
    size: int
    type: int
    bind: int
    shndx: int
    section: str
    file: str  # the STT_FILE name the symbol belongs to ("" for globals of a linked file)
    file_group: int  # symtab index of that STT_FILE entry (-1 if none): one group per linked TU
    sympos: int = 0  # 1-based position among same-named functions (kallsyms order), 0 if not a function

    @property
    def is_func(self) -> bool:
        return self.type == STT_FUNC

    @property
    def defined(self) -> bool:
        return self.shndx != SHN_UNDEF

    @property
    def binding(self) -> str:
        return BIND_NAMES.get(self.bind, str(self.bind))


class SymbolIndex:
    """All symbols of one ELF file, indexed by name, with function bytes served from the mmap."""

    def __init__(self, elf: ElfFile):
        self.elf = elf
        self.path = elf.path
        self.symbols: list[Symbol] = []
        self.by_name: dict[str, list[Symbol]] = {}
        self.functions: dict[str, list[Symbol]] = {}
        self.file_names: dict[int, str] = {}
        self._sorted: dict[int, tuple[list[int], list[Symbol]]] = {}
        self._load()

    @classmethod
    def open(cls, path: str | Path) -> SymbolIndex:
        return cls(open_elf(path))

    def _symtab(self) -> Section | None:
        for sec in self.elf.sections:
            if sec.type == SHT_SYMTAB:
                return sec
        return None

    def _load(self) -> None:
        tab = self._symtab()
        if tab is None:
            return
        if tab.entsize not in (0, _SYM.size) or not 0 < tab.link < len(self.elf.sections):
            raise self.elf.error("garbled symbol table header")
        strsec = self.elf.sections[tab.link]
        raw = self.elf.bytes_at(tab.offset, tab.size - tab.size % _SYM.size, "symbol table")
        strtab = bytes(self.elf.bytes_at(strsec.offset, strsec.size, "string table"))
        entries = list(_SYM.iter_unpack(raw))
        names = self._names(entries, strtab)
        self._build(entries, names, tab.info)

    def _names(self, entries: list, strtab: bytes) -> list[str]:
        """Names by splitting the string table once; tail-merged names are looked up singly."""
        known, off = {}, 0
        for part in strtab.split(b"\0"):
            known[off] = part
            off += len(part) + 1
        out = []
        for i, e in enumerate(entries):
            raw = known.get(e[0])
            if raw is None:
                end = strtab.find(b"\0", e[0])
                if e[0] >= len(strtab) or end < 0:
                    raise self.elf.error(f"garbled symbol name (entry {i})")
                raw = strtab[e[0] : end]
            out.append(raw.decode() if raw.isascii() else raw.decode("utf-8", "replace"))
        return out

    def _build(self, entries: list, names: list[str], first_global: int) -> None:
        secnames = [s.name for s in self.elf.sections]
        nsec = len(secnames)
        relocatable = self.elf.is_relocatable
        sympos = self._sympos(entries, names, nsec)
        file_name, file_group = "", -1
        symbols, by_name, functions = self.symbols, self.by_name, self.functions
        for i, (_n, info, _other, shndx, value, size) in enumerate(entries):
            typ, bind, name = info & 0xF, info >> 4, names[i]
            if typ == STT_FILE:
                file_name, file_group = name, i
                self.file_names[i] = name
            elif i == first_global and not relocatable:
                file_name, file_group = "", -1  # globals of a linked file belong to no one TU
            if shndx < nsec:
                secname = secnames[shndx] if shndx else ""
            else:
                secname = "*ABS*" if shndx == SHN_ABS else ("*COM*" if shndx < SHN_LORESERVE + 0x100 else "")
            if typ == STT_SECTION and not name:
                name = secname
            sym = Symbol(i, name, value, size, typ, bind, shndx, secname, file_name, file_group, sympos.get(i, 0))
            symbols.append(sym)
            if name and typ != STT_SECTION and typ != STT_FILE:
                if name in by_name:
                    by_name[name].append(sym)
                else:
                    by_name[name] = [sym]
                if typ == STT_FUNC and shndx != SHN_UNDEF:
                    functions.setdefault(name, []).append(sym)
        for funcs in functions.values():
            if len(funcs) > 1:
                funcs.sort(key=lambda s: s.sympos)

    def _sympos(self, entries: list, names: list[str], nsec: int) -> dict[int, int]:
        """kallsyms order: address order for a linked image, symtab order for a module."""
        groups: dict[str, list[tuple[int, int]]] = {}
        for i, e in enumerate(entries):
            if e[1] & 0xF == STT_FUNC and e[3] != SHN_UNDEF:
                groups.setdefault(names[i], []).append((e[4], i))
        out = {}
        by_symtab = self.elf.is_relocatable
        for members in groups.values():
            if len(members) == 1:
                out[members[0][1]] = 1
                continue
            members.sort(key=(lambda m: m[1]) if by_symtab else None)
            for pos, (_v, i) in enumerate(members, 1):
                out[i] = pos
        return out

    # -- look-ups ---------------------------------------------------------------------------

    def lookup(self, name: str) -> list[Symbol]:
        """Defined symbols of that name (any type)."""
        return [s for s in self.by_name.get(name, ()) if s.defined]

    def function(self, name: str, sympos: int = 0) -> Symbol | None:
        """The function of that name: the only one, or the one at sympos."""
        funcs = self.functions.get(name, [])
        if sympos:
            return funcs[sympos - 1] if sympos <= len(funcs) else None
        return funcs[0] if len(funcs) == 1 else None

    def first(self, name: str) -> Symbol | None:
        found = self.lookup(name)
        return found[0] if found else None

    def address(self, name: str) -> int | None:
        sym = self.first(name)
        return sym.value if sym else None

    def section_of(self, sym: Symbol) -> Section | None:
        if 0 < sym.shndx < len(self.elf.sections):
            return self.elf.sections[sym.shndx]
        return None

    def code(self, sym: Symbol, length: int | None = None) -> memoryview:
        """The bytes of a defined symbol (its size, or `length`)."""
        sec = self.section_of(sym)
        size = sym.size if length is None else length
        if sec is None:
            raise self.elf.error(f"symbol {sym.name} has no section")
        start = sym.value if self.elf.is_relocatable else sym.value - sec.addr
        if start < 0 or start + size > sec.size:
            raise self.elf.error(f"symbol {sym.name} lies outside its section {sec.name}")
        if sec.type == SHT_NOBITS:
            return memoryview(bytes(size))
        return self.elf.bytes_at(sec.offset + start, size, f"symbol {sym.name}")

    def read_addr(self, addr: int, length: int) -> memoryview | None:
        """Bytes at a linked address (None if no section holds them)."""
        for sec in self.elf.sections:
            if sec.addr and sec.addr <= addr and addr + length <= sec.addr + sec.size:
                if sec.type == SHT_NOBITS:
                    return None
                return self.elf.bytes_at(sec.offset + addr - sec.addr, length)
        return None

    def section_at(self, addr: int) -> Section | None:
        """The allocated section holding a linked address."""
        for sec in self.elf.sections:
            if sec.addr and sec.addr <= addr < sec.addr + sec.size:
                return sec
        return None

    def containing(self, shndx: int, offset: int) -> Symbol | None:
        """The named symbol of a section that covers `offset` (functions and objects first)."""
        keys, syms = self._section_sorted(shndx)
        i = bisect.bisect_right(keys, offset) - 1
        best = None
        while i >= 0:
            s = syms[i]
            if s.value <= offset < s.value + max(s.size, 1):
                if best is None or (best.type == STT_NOTYPE and s.type != STT_NOTYPE):
                    best = s
            if offset - s.value > 1 << 20:
                break
            i -= 1
            if best is not None and best.type != STT_NOTYPE:
                break
        return best

    def _section_sorted(self, shndx: int):
        if shndx not in self._sorted:
            syms = sorted(
                (
                    s
                    for s in self.symbols
                    if s.shndx == shndx and s.name and s.type in (STT_FUNC, STT_OBJECT, STT_NOTYPE)
                ),
                key=lambda s: (s.value, -s.size),
            )
            self._sorted[shndx] = ([s.value for s in syms], syms)
        return self._sorted[shndx]

    def file_group_names(self, group: int) -> set[str]:
        """Names of the local symbols of one linked TU (one STT_FILE group)."""
        return {s.name for s in self._group(group)}

    def _group(self, group: int) -> list[Symbol]:
        out = []
        for s in self.symbols[group + 1 :]:
            if s.type == STT_FILE or s.file_group != group:
                break
            out.append(s)
        return out

    def groups_named(self, file_name: str) -> list[int]:
        """STT_FILE groups whose file name is `file_name`."""
        return [i for i, n in self.file_names.items() if n == file_name]
