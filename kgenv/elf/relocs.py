"""RELA relocation sections of an ELF64 x86-64 file, grouped by the section they patch."""

from __future__ import annotations

import struct
from typing import NamedTuple

from kgenv.elf.reader import SHT_RELA, ElfFile

_RELA = struct.Struct("<QQq")

R_X86_64_NONE, R_X86_64_64, R_X86_64_PC32 = 0, 1, 2
R_X86_64_PLT32, R_X86_64_GOTPCREL, R_X86_64_32, R_X86_64_32S = 4, 9, 10, 11
R_X86_64_16, R_X86_64_PC16, R_X86_64_8, R_X86_64_PC8, R_X86_64_PC64 = 12, 13, 14, 15, 24
R_X86_64_GOTPCRELX, R_X86_64_REX_GOTPCRELX = 41, 42

# bytes each relocation type overwrites at its site
WIDTH = {
    R_X86_64_64: 8,
    R_X86_64_PC64: 8,
    R_X86_64_PC32: 4,
    R_X86_64_PLT32: 4,
    R_X86_64_32: 4,
    R_X86_64_32S: 4,
    R_X86_64_GOTPCREL: 4,
    R_X86_64_GOTPCRELX: 4,
    R_X86_64_REX_GOTPCRELX: 4,
    R_X86_64_16: 2,
    R_X86_64_PC16: 2,
    R_X86_64_8: 1,
    R_X86_64_PC8: 1,
}
PC_RELATIVE = {
    R_X86_64_PC32,
    R_X86_64_PLT32,
    R_X86_64_PC64,
    R_X86_64_PC16,
    R_X86_64_PC8,
    R_X86_64_GOTPCREL,
    R_X86_64_GOTPCRELX,
    R_X86_64_REX_GOTPCRELX,
}
SIGNED = PC_RELATIVE | {R_X86_64_32S}
TYPE_NAMES = {
    R_X86_64_64: "R_X86_64_64",
    R_X86_64_PC32: "R_X86_64_PC32",
    R_X86_64_PLT32: "R_X86_64_PLT32",
    R_X86_64_32: "R_X86_64_32",
    R_X86_64_32S: "R_X86_64_32S",
    R_X86_64_PC64: "R_X86_64_PC64",
    R_X86_64_GOTPCREL: "R_X86_64_GOTPCREL",
}


class Reloc(NamedTuple):
    """One RELA entry: where (offset in the patched section), what (type), to whom (sym + addend)."""

    offset: int
    type: int
    sym: int
    addend: int

    @property
    def width(self) -> int:
        return WIDTH.get(self.type, 4)


def rela_sections(elf: ElfFile) -> dict[int, list]:
    """Index of the patched section -> its RELA section headers."""
    out: dict[int, list] = {}
    for sec in elf.sections:
        if sec.type == SHT_RELA and 0 < sec.info < len(elf.sections):
            out.setdefault(sec.info, []).append(sec)
    return out


def relocations(elf: ElfFile, target_shndx: int) -> list[Reloc]:
    """Relocations patching one section, sorted by offset."""
    out: list[Reloc] = []
    for sec in rela_sections(elf).get(target_shndx, []):
        raw = elf.bytes_at(sec.offset, sec.size - sec.size % _RELA.size, f"section {sec.name}")
        out.extend(Reloc(off, info & 0xFFFFFFFF, info >> 32, add) for off, info, add in _RELA.iter_unpack(raw))
    out.sort(key=lambda r: r.offset)
    return out


def decode_value(data: bytes | memoryview, pos: int, rtype: int) -> int:
    """The value a relocation of this type would have stored at `pos` (sign as the type says)."""
    width = WIDTH.get(rtype, 4)
    return int.from_bytes(bytes(data[pos : pos + width]), "little", signed=rtype in SIGNED)
