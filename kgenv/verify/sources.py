"""Readers of the running binary (vmlinux, .ko, live kallsyms+kcore), one interface."""

from __future__ import annotations

import bisect
import struct
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Protocol

from kgenv.elf.reader import ET_CORE, ET_EXEC, ET_REL, open_elf
from kgenv.elf.relocs import R_X86_64_64, Reloc, relocations
from kgenv.elf.symbols import STB_GLOBAL, STB_LOCAL, STT_FUNC, STT_OBJECT, Symbol, SymbolIndex
from kgenv.errors import UserError

NOTRACE_SECTIONS = (
    ".init.text",
    ".exit.text",
    ".noinstr.text",
    ".entry.text",
    ".cpuidle.text",
    ".head.text",
    ".ref.text.unlikely",
)
# in a linked vmlinux these input sections are folded into .text between marker symbols
NOTRACE_RANGES = {
    ".noinstr.text": ("__noinstr_text_start", "__noinstr_text_end"),
    ".entry.text": ("__entry_text_start", "__entry_text_end"),
    ".cpuidle.text": ("__cpuidle_text_start", "__cpuidle_text_end"),
    ".init.text": ("_sinittext", "_einittext"),
}


def base_name(name: str) -> str:
    """A function name without gcc clone suffixes (foo.isra.0 -> foo)."""
    return name.split(".", 1)[0] if "." in name else name


class SymbolTable(Protocol):
    """The symbols every binary source lists: an ELF file's SymbolIndex, or a live /proc/kallsyms."""

    path: str
    symbols: list[Symbol]
    functions: dict[str, list[Symbol]]

    def lookup(self, name: str) -> list[Symbol]: ...

    def address(self, name: str) -> int | None: ...

    def groups_named(self, file_name: str) -> list[int]: ...

    def file_group_names(self, group: int) -> set[str]: ...


class Binary(ABC):
    """Common look-ups over a SymbolTable; subclasses say how bytes and sites are read."""

    kind = "binary"
    linked = True

    def __init__(self, index: SymbolTable):
        self.index = index
        self.path = index.path

    @abstractmethod
    def code(self, sym: Symbol, length: int | None = None) -> bytes | None:
        """A function's bytes (its size, or `length`); None if the binary does not hold them."""

    @abstractmethod
    def read(self, addr: int, length: int) -> bytes | None:
        """Bytes at a linked address; None if no part of the binary holds them."""

    @abstractmethod
    def section_at(self, addr: int) -> str:
        """The name of the section holding a linked address ('' if none)."""

    def relocs_in(self, sym: Symbol) -> list[Reloc]:
        """Relocations left inside a function: none in a linked image (its sites hold final values)."""
        return []

    @cached_property
    def function_table(self) -> tuple[list[int], list[Symbol]]:
        """Every function sorted by address, and the addresses alone (for bisect)."""
        syms = sorted((s for fs in self.index.functions.values() for s in fs), key=lambda s: s.value)
        return [s.value for s in syms], syms

    def functions(self, name: str) -> list[Symbol]:
        return self.index.functions.get(name, [])

    def lookup(self, name: str) -> list[Symbol]:
        return self.index.lookup(name)

    def groups_named(self, file_name: str) -> list[int]:
        return self.index.groups_named(file_name)

    def group_names(self, group: int) -> set[str]:
        return self.index.file_group_names(group)

    @cached_property
    def clones(self) -> dict[str, list[str]]:
        """Base name -> function names that carry clone suffixes."""
        out: dict[str, list[str]] = {}
        for name in self.index.functions:
            if "." in name:
                out.setdefault(base_name(name), []).append(name)
        return out

    @cached_property
    def fentry(self) -> int | None:
        return self.index.address("__fentry__")

    def section_name(self, sym: Symbol) -> str:
        return sym.section

    def site(self, sym: Symbol, delta: int):
        """A hashable key of a code location, as __mcount_loc lists them."""
        return sym.value + delta

    def mcount_sites(self) -> set:
        return set()

    def region(self, sym: Symbol) -> str:
        """The non-traceable region a function lies in, or ''."""
        sec = self.section_name(sym)
        if sec in NOTRACE_SECTIONS or sec.startswith(".init.") or sec.startswith(".exit."):
            return sec
        for region, (start, stop) in NOTRACE_RANGES.items():
            lo, hi = self.index.address(start), self.index.address(stop)
            if lo is not None and hi is not None and lo <= sym.value < hi:
                return region
        return ""


class ElfBinary(Binary):
    """A binary read from an ELF file with its symbol table (vmlinux or .ko)."""

    index: SymbolIndex

    def __init__(self, index: SymbolIndex):
        super().__init__(index)

    def code(self, sym: Symbol, length: int | None = None) -> bytes | None:
        try:
            return bytes(self.index.code(sym, length))
        except UserError:
            return None

    def read(self, addr: int, length: int) -> bytes | None:
        got = self.index.read_addr(addr, length)
        return bytes(got) if got is not None else None

    def section_at(self, addr: int) -> str:
        sec = self.index.section_at(addr)
        return sec.name if sec else ""


class VmlinuxBinary(ElfBinary):
    """A linked kernel image with its symbol table (Debian's -dbg vmlinux)."""

    kind = "vmlinux"

    def mcount_sites(self) -> set:
        return self._mcount

    @cached_property
    def _mcount(self) -> set:
        start, stop = self.index.address("__start_mcount_loc"), self.index.address("__stop_mcount_loc")
        if start is None or stop is None or stop < start:
            return self._mcount_section()
        raw = self.read(start, stop - start)
        if raw is None:
            raise self.index.elf.error("__mcount_loc table lies outside the file")
        return {v for (v,) in struct.iter_unpack("<Q", raw[: len(raw) - len(raw) % 8])}

    def _mcount_section(self) -> set:
        sec = self.index.elf.section("__mcount_loc")
        if sec is None:
            return set()
        raw = bytes(self.index.elf.section_data(sec))
        return {v for (v,) in struct.iter_unpack("<Q", raw[: len(raw) - len(raw) % 8])}


class ModuleBinary(ElfBinary):
    """A kernel module (.ko): relocatable, so sites are compared as relocations, not bytes."""

    kind = "module"
    linked = False

    def site(self, sym: Symbol, delta: int):
        return (sym.shndx, sym.value + delta)

    def relocs_in(self, sym: Symbol) -> list[Reloc]:
        """Relocations whose site lies inside a function of the module."""
        if sym.shndx not in self._relocs:
            rel = relocations(self.index.elf, sym.shndx)
            self._relocs[sym.shndx] = ([r.offset for r in rel], rel)
        offs, rel = self._relocs[sym.shndx]
        return rel[bisect.bisect_left(offs, sym.value) : bisect.bisect_left(offs, sym.value + sym.size)]

    @cached_property
    def _relocs(self) -> dict[int, tuple[list[int], list[Reloc]]]:
        return {}

    def mcount_sites(self) -> set:
        return self._mcount

    @cached_property
    def _mcount(self) -> set:
        elf = self.index.elf
        sec = elf.section("__mcount_loc")
        if sec is None:
            return set()
        out = set()
        for r in relocations(elf, sec.index):
            if r.type != R_X86_64_64 or r.sym >= len(self.index.symbols):
                continue
            target = self.index.symbols[r.sym]
            out.add((target.shndx, target.value + r.addend))
        return out


class LiveBinary(Binary):
    """A running system: /proc/kallsyms names and /proc/kcore bytes (read-only)."""

    kind = "live"

    def __init__(self, kallsyms: str, kcore: str):
        self.path = kcore
        self.kallsyms_path = kallsyms
        self.core = open_elf(kcore)
        if self.core.type != ET_CORE:
            raise UserError(f"{kcore}: not an ELF core file")
        self.loads = [s for s in self.core.segments() if s.type == 1 and s.filesz]
        self.index = _KallsymsIndex(kallsyms)

    def read(self, addr: int, length: int) -> bytes | None:
        for seg in self.loads:
            if seg.vaddr <= addr and addr + length <= seg.vaddr + seg.filesz:
                return bytes(self.core.bytes_at(seg.offset + addr - seg.vaddr, length))
        return None

    def code(self, sym: Symbol, length: int | None = None) -> bytes | None:
        return self.read(sym.value, sym.size if length is None else length)

    def section_at(self, addr: int) -> str:
        return ".text"


class _KallsymsIndex:
    """The subset of SymbolIndex that /proc/kallsyms can fill (no TU, sizes from the next address)."""

    def __init__(self, path: str):
        self.path = path
        try:
            text = Path(path).read_text(errors="replace")
        except OSError as exc:
            raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if len(parts) < 3 or len(parts[1]) != 1:
                raise UserError(f"{path}: line {n} is not 'address type name'")
            try:
                rows.append((int(parts[0], 16), parts[1], parts[2], " ".join(parts[3:])))
            except ValueError:
                raise UserError(f"{path}: line {n} has a bad address") from None
        if rows and all(r[0] == 0 for r in rows):
            raise UserError(f"{path}: all addresses are zero (read it as root, kptr_restrict)")
        self._build(sorted(rows, key=lambda r: r[0]))

    def _build(self, rows: list) -> None:
        self.symbols: list[Symbol] = []
        self.by_name: dict[str, list[Symbol]] = {}
        self.functions: dict[str, list[Symbol]] = {}
        for i, (addr, typ, name, module) in enumerate(rows):
            nxt = next((r[0] for r in rows[i + 1 :] if r[0] > addr), addr)
            func = typ in "tTwW"
            bind = STB_LOCAL if typ.islower() else STB_GLOBAL
            sym = Symbol(
                i,
                name,
                addr,
                min(nxt - addr, 1 << 20),
                STT_FUNC if func else STT_OBJECT,
                bind,
                1,
                ".text" if func else ".data",
                module,
                -1,
            )
            self.by_name.setdefault(name, []).append(sym)
            if func:
                funcs = self.functions.setdefault(name, [])
                sym = sym._replace(sympos=len(funcs) + 1)
                funcs.append(sym)
                self.by_name[name][-1] = sym
            self.symbols.append(sym)

    def lookup(self, name: str) -> list[Symbol]:
        return self.by_name.get(name, [])

    def address(self, name: str) -> int | None:
        found = self.by_name.get(name)
        return found[0].value if found else None

    def groups_named(self, file_name: str) -> list[int]:
        return []  # kallsyms names no source files

    def file_group_names(self, group: int) -> set[str]:
        return set()


def open_binary(path: str | Path) -> Binary:
    """A vmlinux or .ko reader for `path`, chosen by ELF type."""
    index = SymbolIndex.open(path)
    if not index.symbols:
        raise UserError(f"{path}: has no symbol table (use the -dbg vmlinux or an unstripped .ko)")
    if index.elf.type == ET_REL:
        return ModuleBinary(index)
    if index.elf.type == ET_EXEC:
        return VmlinuxBinary(index)
    raise UserError(f"{path}: ELF type {index.elf.type} is neither a kernel image nor a module")
