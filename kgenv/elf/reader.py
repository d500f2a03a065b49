"""Minimal ELF64 x86-64 reader over mmap: header, section headers, bounds-checked slices."""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from kgenv.errors import UserError

EM_X86_64 = 62
ET_REL, ET_EXEC, ET_DYN, ET_CORE = 1, 2, 3, 4
SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS = 2, 3, 4, 8
SHF_ALLOC, SHF_EXECINSTR, SHF_MERGE, SHF_STRINGS = 0x2, 0x4, 0x10, 0x20
SHN_UNDEF, SHN_LORESERVE, SHN_ABS, SHN_COMMON, SHN_XINDEX = 0, 0xFF00, 0xFFF1, 0xFFF2, 0xFFFF

MODULE_SIG_MAGIC = b"~Module signature appended~\n"
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")
# struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], be32 sig_len
_MODSIG = struct.Struct(">BBBBB3sI")


@dataclass(frozen=True)
class Section:
    """One section header, with its resolved name."""

    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int

    @property
    def is_exec(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)


@dataclass(frozen=True)
class Segment:
    """One program header (used for kcore-style cores)."""

    type: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int


def signed_length(data: bytes | mmap.mmap, path: str) -> int:
    """Length of a module without its appended signature (the whole length if unsigned)."""
    end = len(data)
    if end < len(MODULE_SIG_MAGIC) or data[end - len(MODULE_SIG_MAGIC) : end] != MODULE_SIG_MAGIC:
        return end
    info_end = end - len(MODULE_SIG_MAGIC)
    if info_end < _MODSIG.size:
        raise UserError(f"{path}: truncated module signature")
    fields = _MODSIG.unpack_from(data, info_end - _MODSIG.size)
    signer_len, key_id_len, sig_len = fields[3], fields[4], fields[6]
    start = info_end - _MODSIG.size - sig_len - signer_len - key_id_len
    if start < _EHDR.size:
        raise UserError(f"{path}: garbled module signature")
    return start


class ElfFile:
    """An ELF64 little-endian x86-64 file, mapped read-only; every read is bounds-checked."""

    def __init__(self, path: str | os.PathLike, data: bytes | None = None):
        self.path = str(path)
        self._file = None
        if data is None:
            data = self._map(self.path)
        self.data = data
        self.size = signed_length(data, self.path)
        self._parse_header()
        self.sections = self._read_sections()
        self._by_name: dict[str, Section] = {}
        for sec in self.sections:
            self._by_name.setdefault(sec.name, sec)

    @staticmethod
    def _map(path: str):
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; only regular files are mapped
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise UserError(f"{path}: not a regular file, not an ELF object")
                if st.st_size == 0:
                    raise UserError(f"{path}: empty file, not an ELF object")
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None

    def error(self, what: str) -> UserError:
        """A one-line error naming this file."""
        return UserError(f"{self.path}: {what}")

    def _parse_header(self) -> None:
        if self.size < _EHDR.size or self.data[:4] != b"\x7fELF":
            raise self.error("not an ELF file")
        ident = self.data[:16]
        if ident[4] != 2 or ident[5] != 1:
            raise self.error("not a 64-bit little-endian ELF file")
        h = _EHDR.unpack_from(self.data, 0)
        (
            _,
            self.type,
            self.machine,
            _,
            self.entry,
            self.phoff,
            self.shoff,
            _,
            _,
            self.phentsize,
            self.phnum,
            self.shentsize,
            self.shnum,
            self.shstrndx,
        ) = h
        if self.machine != EM_X86_64:
            raise self.error(f"not an x86-64 ELF file (machine {self.machine})")

    def _read_sections(self) -> list[Section]:
        if self.shoff == 0:
            return []
        if self.shentsize != _SHDR.size:
            raise self.error("garbled ELF section header size")
        count, strndx = self.shnum, self.shstrndx
        first = self._shdr(0)
        if count == 0:
            count = first[5]  # extended numbering keeps the count in section 0's size
        if strndx == SHN_XINDEX:
            strndx = first[6]
        if count > 1_000_000:
            raise self.error("garbled ELF section count")
        self.bytes_at(self.shoff, count * _SHDR.size, "section headers")
        raw = [self._shdr(i) for i in range(count)]
        if not 0 <= strndx < count:
            raise self.error("garbled section name table index")
        names = raw[strndx]
        out = []
        for i, (name, typ, flags, addr, off, size, link, info, _align, entsize) in enumerate(raw):
            if typ != SHT_NOBITS and i and size:
                self.bytes_at(off, size, f"section {i}")
            sname = self.cstring(names[4], names[5], name) if i else ""
            out.append(Section(i, sname, typ, flags, addr, off, size, link, info, entsize))
        return out

    def _shdr(self, i: int):
        off = self.shoff + i * _SHDR.size
        if off < 0 or off + _SHDR.size > self.size:
            raise self.error("truncated (section headers past end of file)")
        return _SHDR.unpack_from(self.data, off)

    def segments(self) -> list[Segment]:
        """Program headers (PT_LOAD etc.)."""
        if not self.phoff or not self.phnum:
            return []
        if self.phentsize != _PHDR.size:
            raise self.error("garbled ELF program header size")
        self.bytes_at(self.phoff, self.phnum * _PHDR.size, "program headers")
        out = []
        for i in range(self.phnum):
            p = _PHDR.unpack_from(self.data, self.phoff + i * _PHDR.size)
            out.append(Segment(p[0], p[2], p[3], p[5], p[6]))
        return out

    def bytes_at(self, offset: int, length: int, what: str = "data") -> memoryview:
        """A view of file bytes; raises UserError when the range lies outside the file."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise self.error(f"truncated ({what} at {offset:#x}+{length:#x} past end of file)")
        return memoryview(self.data)[offset : offset + length]

    def cstring(self, table_off: int, table_size: int, index: int) -> str:
        """A NUL-terminated name from a string table section."""
        if index >= table_size:
            raise self.error("garbled string table index")
        start = table_off + index
        end = self.data.find(b"\0", start, table_off + table_size)
        if end < 0:
            raise self.error("garbled string table (unterminated name)")
        return self.data[start:end].decode("utf-8", "replace")

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    def section_data(self, sec: Section) -> memoryview:
        if sec.type == SHT_NOBITS:
            return memoryview(bytes(sec.size))
        return self.bytes_at(sec.offset, sec.size, f"section {sec.name}")

    def close(self) -> None:
        if isinstance(self.data, mmap.mmap):
            try:
                self.data.close()
            except BufferError:
                pass  # a view is still alive; the map closes when it is collected

    @property
    def is_relocatable(self) -> bool:
        return self.type == ET_REL


def open_elf(path: str | Path) -> ElfFile:
    """Open an ELF file, turning any parse failure into a UserError naming it."""
    try:
        return ElfFile(path)
    except UserError:
        raise
    except (struct.error, ValueError, IndexError, OverflowError) as exc:
        raise UserError(f"{path}: garbled ELF file ({exc})") from None
