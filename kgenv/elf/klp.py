"""Rewrite an ET_REL object so chosen references become livepatch symbols and .klp.rela sections."""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kgenv.elf.reader import (
    SHF_ALLOC,
    SHN_UNDEF,
    SHN_XINDEX,
    SHT_RELA,
    SHT_SYMTAB,
    ElfFile,
    signed_length,
)
from kgenv.elf.relocs import relocations
from kgenv.elf.symbols import STT_SECTION, SymbolIndex
from kgenv.errors import RefusedError, UserError

# Constants from the kernel's livepatch module ELF format (OS-specific ranges of glibc's elf.h).
SHN_LIVEPATCH = 0xFF20
SHF_RELA_LIVEPATCH = 0x00100000
SHF_INFO_LINK = 0x40

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
_MAX_SECTIONS = 0xFF00  # beyond this ELF needs extended numbering, which we do not write

SPECIAL_SECTION = "special-section-in-target-module"
# The only sections a .klp.rela.<module> relocation may patch: the livepatch module's own code and
# plain data. vmlinux's .klp.rela sections are applied while the patch module loads
# (apply_relocations, since 5.8); a module target's only when that module is loaded and the patch
# enabled. By then the loader has consumed everything else with the fields still zero: it reads
# tables in find_module_sections (__jump_table, .static_call_sites, __param, .init_array/.ctors,
# __dyndbg, _ftrace_events, __tracepoints_ptrs, __bug_table, __mcount_loc, .orc_unwind*, ...),
# applies alternatives from .altinstr_replacement, copies .data..percpu into the per-CPU area and
# write-protects .data..ro_after_init after init; .init.* is freed. An allowlist, so a section
# nobody reviewed is refused rather than silently left zero.
MODULE_TARGET_SECTIONS = (".text", ".rodata", ".data")  # each name or name + ".*"
MODULE_TARGET_EXCLUDED = frozenset({".altinstr_replacement", ".data..ro_after_init", ".data..percpu"})
_LIVEPATCH_ALIAS = "livepatch_"  # gensrc's global aliases of replaced functions start so


class SpecialSectionError(RefusedError):
    """A module target's symbol is needed outside the patch module's own code and plain data (one
    line; `sites` are (function, section, symbol) for the report)."""

    def __init__(self, objname: str, sites: list[tuple[str, str, str]]):
        self.objname = objname
        self.sites = sites
        per_fn: dict[str, list[str]] = {}
        for fn, sec, sym in sites:
            per_fn.setdefault(fn, []).append(f"{sym} ({sec})")
        what = "; ".join(f"{fn} uses {objname}'s own {', '.join(dict.fromkeys(s))}" for fn, s in per_fn.items())
        super().__init__(
            f"{SPECIAL_SECTION}: {what}: only .text*, .rodata* and .data* may take .klp.rela.{objname} "
            f"relocations, the module loader consumes other sections before livepatch writes them "
            f"(reach the symbol through a function of {objname}, or patch {objname} otherwise)"
        )


@dataclass(frozen=True)
class KlpTarget:
    """Where a converted symbol lives: 'vmlinux' or a module name, and its kallsyms position."""

    objname: str
    sympos: int
    name: str = ""  # the symbol's name there, when the reference uses another (a per-TU label)

    def symbol_name(self, name: str) -> str:
        return f".klp.sym.{self.objname}.{self.name or name},{self.sympos}"


@dataclass(frozen=True)
class KlpResult:
    """What a rewrite did: converted symbols and the .klp.rela sections written."""

    path: str
    symbols: tuple[str, ...]
    sections: tuple[str, ...]
    moved: int

    def to_dict(self) -> dict:
        return {"path": self.path, "symbols": list(self.symbols), "sections": list(self.sections), "moved": self.moved}


class _Image:
    """The object as mutable bytes plus raw section headers (lists, so they can be edited)."""

    def __init__(self, path: str, data: bytes):
        self.path = path
        self.elf = _parse(path, data)
        self.data = bytearray(data)
        self.ehdr = list(_EHDR.unpack_from(data, 0))
        self.shdrs = [
            list(_SHDR.unpack_from(data, self.elf.shoff + i * _SHDR.size)) for i in range(len(self.elf.sections))
        ]
        self.names = [s.name for s in self.elf.sections]

    def error(self, what: str) -> UserError:
        return UserError(f"{self.path}: {what}")

    def section_bytes(self, i: int) -> bytes:
        sh = self.shdrs[i]
        return bytes(self.elf.bytes_at(sh[4], sh[5], f"section {self.names[i]}"))

    def append(self, blob: bytes, align: int = 8) -> int:
        """Append bytes at the end of the file; their offset."""
        self.data += bytes(-len(self.data) % align)
        off = len(self.data)
        self.data += blob
        return off


def _parse(path: str, data: bytes) -> ElfFile:
    try:
        elf = ElfFile(path, data)
    except UserError:
        raise
    except (struct.error, ValueError, IndexError, OverflowError) as exc:
        raise UserError(f"{path}: garbled ELF file ({exc})") from None
    if not elf.is_relocatable:
        raise elf.error("not a relocatable object (.o/.ko)")
    if elf.shnum == 0 or elf.shstrndx == SHN_XINDEX or not elf.sections:
        raise elf.error("extended or missing section numbering is not supported")
    return elf


def convert(
    path: str | os.PathLike,
    symbols: Mapping[str, tuple[str, int] | tuple[str, int, str]],
    out: str | os.PathLike | None = None,
    names: Mapping[str, str] | None = None,
) -> KlpResult:
    """Rename the given undefined symbols to livepatch symbols and move their relocations.

    `symbols` maps a symbol name to (objname, sympos), or to (objname, sympos, name there) when the
    reference carries another name; the result is written atomically to `out` (default: over `path`).
    `names` maps defined symbols of the module to the function they stand for, for refusals.
    """
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if data[:4] == b"\x7fELF" and signed_length(data, path) != len(data):
        raise UserError(f"{path}: module is signed; rewrite the unsigned module, then sign it")
    img = _Image(path, data)
    targets = {k: _target(path, k, v) for k, v in symbols.items()}
    result = _rewrite(img, targets, names or {})
    dest = str(out or path)
    _write_atomic(dest, bytes(img.data), path)
    return KlpResult(dest, *result)


def _target(path: str, name: str, value) -> KlpTarget:
    """Validate one mapping entry: the kernel parses the name at the first '.' and the ','."""
    objname, sympos, *rest = value
    real = rest[0] if rest else name
    for n in (name, real):
        if not n or "," in n or "\0" in n:
            raise UserError(f"{path}: symbol name {n!r} cannot become a livepatch symbol")
    if not objname or any(c in objname for c in ".,\0/"):
        raise UserError(f"{path}: bad livepatch object name {objname!r} for {name}")
    if not isinstance(sympos, int) or sympos < 0:
        raise UserError(f"{path}: bad sympos {sympos!r} for {name}")
    return KlpTarget(objname, sympos, real if rest else "")


def _rewrite(img: _Image, targets: dict[str, KlpTarget], names: Mapping[str, str]):
    symtab = _symtab_index(img)
    converted = _convert_symbols(img, symtab, targets)
    objnames = {i: targets[name].objname for i, name in converted.items()}
    # a refusal names what the module's symbols stand for: functions and the running object's symbols
    _refuse_module_targets(img, objnames, converted, {**names, **{n: t.name for n, t in targets.items() if t.name}})
    klp = _split_relocations(img, symtab, objnames)
    _drop_depends(img, set(objnames.values()) - {"vmlinux"})
    _finish(img, klp)
    symbols = tuple(sorted(targets[n].symbol_name(n) for n in converted.values()))
    return symbols, tuple(s[0] for s in klp), sum(len(s[2]) for s in klp)


def _drop_depends(img: _Image, modules: set[str]) -> None:
    """modpost wrote `depends=` from the symbols it saw undefined, before they became livepatch
    symbols: a target module reached only through .klp.rela is no load-time dependency (the patch
    may load first; livepatch binds it when the module comes). The string shrinks in place, NULs
    after it (the kernel and modinfo skip empty strings)."""
    found = [i for i, n in enumerate(img.names) if n == ".modinfo"]
    if not modules or len(found) != 1:
        return
    sh = img.shdrs[found[0]]
    data = img.section_bytes(found[0])
    at = 0
    for entry in data.split(b"\0"):
        if entry.startswith(b"depends="):
            names = [n for n in entry[8:].decode(errors="replace").split(",") if n]
            kept = ",".join(n for n in names if n.replace("-", "_") not in modules).encode()
            new = b"depends=" + kept
            img.data[sh[4] + at : sh[4] + at + len(entry)] = new + bytes(len(entry) - len(new))
            return
        at += len(entry) + 1


def _symtab_index(img: _Image) -> int:
    found = [i for i, sh in enumerate(img.shdrs) if sh[1] == SHT_SYMTAB]
    if len(found) != 1:
        raise img.error(f"expected one symbol table, found {len(found)}")
    sh = img.shdrs[found[0]]
    if sh[9] != _SYM.size or sh[5] % _SYM.size or not 0 < sh[6] < len(img.shdrs):
        raise img.error("garbled symbol table header")
    return found[0]


def _convert_symbols(img: _Image, symtab: int, targets: dict[str, KlpTarget]) -> dict[int, str]:
    """Rewrite matching symbol entries in place; symbol index -> original name."""
    sh = img.shdrs[symtab]
    strtab_i = sh[6]
    strtab = bytearray(img.section_bytes(strtab_i))
    converted: dict[int, str] = {}
    for i in range(1, sh[5] // _SYM.size):
        off = sh[4] + i * _SYM.size
        name_off, info, other, shndx, value, size = _SYM.unpack_from(img.data, off)
        name = _cstring(img, strtab, name_off)
        if name not in targets:
            continue
        if shndx != SHN_UNDEF:
            raise img.error(f"symbol {name} is defined here; only references can become livepatch symbols")
        new_name = len(strtab)
        strtab += targets[name].symbol_name(name).encode() + b"\0"
        _SYM.pack_into(img.data, off, new_name, info, other, SHN_LIVEPATCH, value, size)
        converted[i] = name
    missing = sorted(set(targets) - set(converted.values()))
    if missing:
        raise img.error(f"no such symbol to convert: {', '.join(missing)}")
    _move_section(img, strtab_i, bytes(strtab))
    return converted


def _cstring(img: _Image, table: bytes | bytearray, off: int) -> str:
    end = table.find(b"\0", off)
    if off >= len(table) or end < 0:
        raise img.error("garbled symbol name")
    return table[off:end].decode("utf-8", "replace")


def _move_section(img: _Image, i: int, blob: bytes) -> None:
    """Give a section new contents at the end of the file (the old bytes stay, unreferenced)."""
    img.shdrs[i][4] = img.append(blob, max(1, img.shdrs[i][8]))
    img.shdrs[i][5] = len(blob)


def _split_relocations(img: _Image, symtab: int, objnames: dict[int, str]) -> list:
    """Move relocations against converted symbols out of allocated sections' .rela sections.

    Returns [(klp section name, header template, relocation entries)] in a stable order.
    """
    groups: dict[tuple[str, int], list[bytes]] = {}
    templates: dict[tuple[str, int], list] = {}
    for i, sh in enumerate(list(img.shdrs)):
        if sh[1] != SHT_RELA or sh[6] != symtab or not _patches_alloc(img, sh):
            continue  # the loader never applies relocations to non-allocated sections
        keep, moved = _partition(img, i, objnames)
        for objname, entry in moved:
            key = (objname, sh[7])
            groups.setdefault(key, []).append(entry)
            templates.setdefault(key, sh)
        if moved:
            _rewrite_in_place(img, i, keep)
    return [
        (f".klp.rela.{obj}.{img.names[info]}", templates[(obj, info)], groups[(obj, info)])
        for obj, info in sorted(groups)
    ]


class _Sites:
    """Symbols by symbol table index, for naming where a refused relocation sits; `names` maps a
    symbol of the module to the function it stands for (aliases, renamed replacements)."""

    def __init__(self, index: SymbolIndex, names: Mapping[str, str]):
        self.index = index
        self.by_idx = {s.symidx: s for s in index.symbols}
        self.names = names

    def function(self, sym) -> str:
        return self.names.get(sym.name) or sym.name.removeprefix(_LIVEPATCH_ALIAS)


def module_target_allowed(section: str) -> bool:
    """May a .klp.rela.<module> relocation patch this section of the livepatch module?"""
    if section in MODULE_TARGET_EXCLUDED:
        return False
    return any(section == p or section.startswith(p + ".") for p in MODULE_TARGET_SECTIONS)


def _refuse_module_targets(
    img: _Image, objnames: dict[int, str], converted: dict[int, str], names: Mapping[str, str]
) -> None:
    """A .klp.rela.<module> section may only patch the patch module's own code and plain data."""
    named: _Sites | None = None
    found: dict[str, list[tuple[str, str, str]]] = {}
    for sec in img.elf.sections:
        if not sec.flags & SHF_ALLOC or module_target_allowed(sec.name):
            continue  # the loader never applies relocations to non-allocated sections
        relocs = relocations(img.elf, sec.index)
        for r in relocs:
            obj = objnames.get(r.sym)
            if obj is None or obj == "vmlinux":
                continue
            named = named or _Sites(SymbolIndex(img.elf), names)
            site = _site_function(named, sec.index, relocs, r.offset)
            found.setdefault(obj, []).append((site, sec.name, names.get(converted[r.sym], converted[r.sym])))
    for obj, sites in sorted(found.items()):
        raise SpecialSectionError(obj, sorted(dict.fromkeys(sites)))


def _site_function(sites: _Sites, shndx: int, relocs: list, offset: int) -> str:
    """The function a refused relocation is about. In code: the function holding it, or for code
    outside any function (.altinstr_replacement) the one of the table entry pointing at it. In a
    table: the entry's nearest earlier field that points into code (jump label code/target, static
    call site, alternative's instruction); else the object holding the entry."""
    index, elf = sites.index, sites.index.elf
    if elf.sections[shndx].is_exec:
        fn = index.containing(shndx, offset)
        if fn is not None:
            return sites.function(fn)
        for sec in elf.sections:
            if sec.index == shndx or not sec.flags & SHF_ALLOC:
                continue
            table = relocations(elf, sec.index)
            refs = [(where, r) for r in table if (where := _points_into(sites, r, shndx)) is not None]
            refs = [(where, r) for where, r in refs if where <= offset]
            if refs:
                entry = max(refs, key=lambda x: x[0])[1]
                name = _code_field(sites, table, entry.offset, skip=shndx)
                if name is not None:
                    return name
        return "?"
    name = _code_field(sites, relocs, offset)
    if name is not None:
        return name
    holder = index.containing(shndx, offset)
    return holder.name if holder is not None else "?"


def _points_into(sites: _Sites, r, shndx: int) -> int | None:
    """The offset in section `shndx` a relocation points to, if it points there."""
    sym = sites.by_idx.get(r.sym)
    if sym is None or not sym.defined or sym.shndx != shndx:
        return None
    return r.addend if sym.type == STT_SECTION else sym.value + r.addend


def _code_field(sites: _Sites, relocs: list, offset: int, skip: int = -1) -> str | None:
    """The function the nearest field at or before `offset` points into (code of section `skip` aside)."""
    index = sites.index
    for r in sorted((r for r in relocs if r.offset <= offset), key=lambda r: -r.offset):
        sym = sites.by_idx.get(r.sym)
        if sym is None or not sym.defined or sym.shndx >= len(index.elf.sections) or sym.shndx == skip:
            continue
        if not index.elf.sections[sym.shndx].is_exec:
            continue
        where = r.addend if sym.type == STT_SECTION else sym.value + r.addend
        fn = index.containing(sym.shndx, where)
        if fn is not None:
            return sites.function(fn)
    return None


def _patches_alloc(img: _Image, sh: list) -> bool:
    return 0 < sh[7] < len(img.shdrs) and bool(img.shdrs[sh[7]][2] & SHF_ALLOC)


def _partition(img: _Image, i: int, objnames: dict[int, str]):
    """This section's entries: those kept, and (objname, entry) pairs to move."""
    raw = img.section_bytes(i)
    if len(raw) % _RELA.size:
        raise img.error(f"garbled relocation section {img.names[i]}")
    keep, moved = [], []
    for k in range(0, len(raw), _RELA.size):
        entry = raw[k : k + _RELA.size]
        sym = _RELA.unpack(entry)[1] >> 32
        if sym in objnames:
            moved.append((objnames[sym], entry))
        else:
            keep.append(entry)
    return keep, moved


def _rewrite_in_place(img: _Image, i: int, keep: list[bytes]) -> None:
    """The kept entries shrink the section where it is; zero the freed tail."""
    sh = img.shdrs[i]
    blob = b"".join(keep)
    img.data[sh[4] : sh[4] + sh[5]] = blob + bytes(sh[5] - len(blob))
    sh[5] = len(blob)


def _finish(img: _Image, klp: list) -> None:
    """Append .klp.rela sections, a grown .shstrtab and a new section header table."""
    if len(img.shdrs) + len(klp) >= _MAX_SECTIONS:
        raise img.error("too many sections for a rewrite without extended numbering")
    shstrndx = img.ehdr[13]
    shstr = bytearray(img.section_bytes(shstrndx))
    for name, template, entries in klp:
        name_off = len(shstr)
        shstr += name.encode() + b"\0"
        off = img.append(b"".join(entries))
        flags = template[2] | SHF_ALLOC | SHF_RELA_LIVEPATCH | SHF_INFO_LINK
        img.shdrs.append(
            [name_off, SHT_RELA, flags, 0, off, 24 * len(entries), template[6], template[7], 8, _RELA.size]
        )
    if klp:
        _move_section(img, shstrndx, bytes(shstr))
    table = b"".join(_SHDR.pack(*sh) for sh in img.shdrs)
    img.ehdr[6] = img.append(table)
    img.ehdr[12] = len(img.shdrs)
    _EHDR.pack_into(img.data, 0, *img.ehdr)


def _write_atomic(dest: str, blob: bytes, like: str) -> None:
    """Write beside the destination and rename, so a reader never sees half a file."""
    folder = os.path.dirname(os.path.abspath(dest))
    fd, tmp = tempfile.mkstemp(prefix=".klp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.chmod(tmp, os.stat(like).st_mode & 0o7777)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
