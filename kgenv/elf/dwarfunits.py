"""The compile units of an ELF object's DWARF, read without pyelftools' DIE tree (fast enough for every
module of a kernel): each C unit's name and the files its line table names (the headers it used).

Modules are relocatable objects (`ld -r` of their TUs): the offsets in a unit header, in its top DIE
and in a line table header are relocations (RELA, the field holds 0), so the few fields read here
are resolved through `.rela.debug_info` / `.rela.debug_line` rather than by relocating whole sections.
"""

from __future__ import annotations

import bisect
import io
import posixpath
import struct

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

DW_FORM_strp, DW_FORM_line_strp, DW_FORM_string, DW_FORM_indirect, DW_FORM_implicit_const = 0x0E, 0x1F, 0x08, 0x16, 0x21
DW_AT_name, DW_AT_stmt_list, DW_AT_producer = 0x03, 0x10, 0x25
DW_UT_compile, DW_UT_partial = 0x01, 0x03
# fixed-size forms: form -> bytes (offset-sized forms are resolved per unit)
_FIXED = {
    0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x11: 1, 0x12: 2, 0x13: 4, 0x14: 8, 0x19: 0, 0x1E: 16,
    0x20: 8, 0x1C: 4, 0x24: 8, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4, 0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4, 0x21: 0,
}  # fmt: skip
_OFFSET = {0x0E, 0x10, 0x17, 0x1D, 0x1F}  # strp, ref_addr, sec_offset, strp_sup, line_strp
_LEB = {0x0D, 0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23}  # sdata, udata, ref_udata, strx, addrx, loclistx, rnglistx
_BLOCK = {0x0A: 1, 0x03: 2, 0x04: 4}  # block1/2/4: length prefix size; block and exprloc: uleb length
R_X86_64_64, R_X86_64_32 = 1, 10
DW_LNCT_path, DW_LNCT_directory_index = 0x1, 0x2


def _uleb(data: bytes, off: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[off]
        off += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, off


class _Relocs:
    """A section's RELA entries looked up by offset (bisect over the offsets, in entry order when sorted)."""

    def __init__(self, rela: bytes, symtab: bytes, sections: list[str]):
        n = len(rela) // 24
        self.rela = rela[: n * 24]
        offsets = list(memoryview(self.rela).cast("Q")[0::3])
        self.order = list(range(n))
        if offsets != sorted(offsets):
            self.order.sort(key=offsets.__getitem__)
            offsets = [offsets[i] for i in self.order]
        self.keys = offsets
        self.symtab, self.sections = symtab, sections

    def at(self, off: int) -> tuple[str, int] | None:
        """(target section name, value) of the relocation at `off`, or None."""
        i = bisect.bisect_left(self.keys, off)
        if i == len(self.keys) or self.keys[i] != off:
            return None
        _, info, addend = struct.unpack_from("<QQq", self.rela, self.order[i] * 24)
        sym = info >> 32
        if (sym + 1) * 24 > len(self.symtab):
            return None
        _, _, _, shndx, value, _ = struct.unpack_from("<IBBHQQ", self.symtab, sym * 24)
        return (self.sections[shndx] if shndx < len(self.sections) else "", value + addend)


def compile_units(data: bytes) -> list[str]:
    """Relative names of the GNU C compile units of an ELF object (a `.ko` or an executable)."""
    return sorted(n for n in unit_files(data, with_files=False) if n != UNREADABLE)


def unit_files(data: bytes, with_files: bool = True) -> dict[str, list[str]]:
    """Each GNU C compile unit's relative name -> the files its line table names, relative to the
    source tree (the unit's own .c among them); empty lists unless with_files."""
    elf = ELFFile(io.BytesIO(data))
    names = [s.name for s in elf.iter_sections()]
    secs = {s.name: s for s in elf.iter_sections()}
    info = secs.get(".debug_info")
    if info is None or info.header.sh_type == "SHT_NOBITS":
        return {}

    def raw(name: str) -> bytes:
        s = secs.get(name)
        return s.data() if s is not None and s.header.sh_type != "SHT_NOBITS" else b""

    relocs = line_relocs = None
    if elf.header.e_type == "ET_REL":
        symtab = raw(".symtab")
        if ".rela.debug_info" in secs:
            relocs = _Relocs(raw(".rela.debug_info"), symtab, names)
        if ".rela.debug_line" in secs:
            line_relocs = _Relocs(raw(".rela.debug_line"), symtab, names)
    strs = {".debug_str": raw(".debug_str"), ".debug_line_str": raw(".debug_line_str")}
    lines = raw(".debug_line") if with_files else b""
    out: dict[str, list[str]] = {}
    for name, producer, stmt in _top_dies(info.data(), raw(".debug_abbrev"), relocs, strs):
        if name == UNREADABLE:
            out[UNREADABLE] = [UNREADABLE]
        elif producer.startswith("GNU C") and name.endswith(".c") and not name.startswith(("/", ".")):
            files = out.setdefault(name, [])
            if lines and stmt is not None:
                try:
                    files += _line_files(lines, stmt, line_relocs, strs)
                except (IndexError, ValueError, struct.error, KeyError):
                    files.append(UNREADABLE)
    return {n: sorted(set(f)) for n, f in out.items()}


UNREADABLE = "?"  # a unit (its name) or line table (its files) this reader cannot follow


def _top_dies(info: bytes, abbrev: bytes, relocs: _Relocs | None, strs: dict[str, bytes]):
    """(DW_AT_name, DW_AT_producer, DW_AT_stmt_list or None) of each compile unit; a unit this reader
    cannot follow is named UNREADABLE (other unit kinds are skipped)."""
    off = 0
    while off + 11 <= len(info):
        (length,) = struct.unpack_from("<I", info, off)
        osize, hdr = 4, off + 4
        if length == 0xFFFFFFFF:
            (length,) = struct.unpack_from("<Q", info, hdr)
            osize, hdr = 8, hdr + 8
        end = hdr + length
        if length == 0:
            return
        if end > len(info):
            yield UNREADABLE, "", None
            return
        try:
            found = _unit(info, hdr, osize, abbrev, relocs, strs)
        except (IndexError, ValueError, struct.error, KeyError):
            found = (UNREADABLE, "", None)
        if found:
            yield found
        off = end


def _offset(info: bytes, at: int, osize: int, relocs: _Relocs | None, default: str) -> tuple[str, int]:
    """An offset-sized field: through its relocation in a relocatable object, else as stored."""
    hit = relocs.at(at) if relocs else None
    if hit is not None:
        return hit
    return default, int.from_bytes(info[at : at + osize], "little")


def _unit(info: bytes, hdr: int, osize: int, abbrev: bytes, relocs, strs) -> tuple[str, str, int | None] | None:
    (version,) = struct.unpack_from("<H", info, hdr)
    if version >= 5:
        unit_type, addr_size = info[hdr + 2], info[hdr + 3]
        if unit_type not in (DW_UT_compile, DW_UT_partial):
            return None
        _, abbrev_off = _offset(info, hdr + 4, osize, relocs, ".debug_abbrev")
        die = hdr + 4 + osize
    elif version >= 2:
        _, abbrev_off = _offset(info, hdr + 2, osize, relocs, ".debug_abbrev")
        addr_size = info[hdr + 2 + osize]
        die = hdr + 3 + osize
    else:
        return None
    code, die = _uleb(info, die)
    attrs = _abbrev(abbrev, abbrev_off, code)
    if attrs is None:
        return None
    got: dict[int, str] = {}
    stmt = None
    for at, form, implicit in attrs:
        if form == DW_FORM_indirect:
            form, die = _uleb(info, die)
        if at in (DW_AT_name, DW_AT_producer):
            text = _string(info, die, form, osize, relocs, strs)
            if text is None:
                return None  # strx & co: needs .debug_str_offsets (split DWARF); not what Kbuild makes
            got[at] = text
        elif at == DW_AT_stmt_list and form in _OFFSET:
            stmt = _offset(info, die, osize, relocs, ".debug_line")[1]
        die = _skip(info, die, form, osize, addr_size, implicit)
    if len(got) == 2:
        return got[DW_AT_name], got[DW_AT_producer], stmt
    return None


def _string(data: bytes, at: int, form: int, osize: int, relocs, strs) -> str | None:
    """A string attribute, inline or through .debug_str/.debug_line_str; None for other forms."""
    if form == DW_FORM_string:
        return data[at : data.index(b"\0", at)].decode(errors="replace")
    if form in (DW_FORM_strp, DW_FORM_line_strp):
        sec, pos = _offset(data, at, osize, relocs, ".debug_str" if form == DW_FORM_strp else ".debug_line_str")
        table = strs.get(sec, b"")
        return table[pos : table.index(b"\0", pos)].decode(errors="replace")
    return None


def _line_files(lines: bytes, off: int, relocs, strs) -> list[str]:
    """The file names of the line table header at `off`, joined with their directories."""
    (length,) = struct.unpack_from("<I", lines, off)
    osize, at = 4, off + 4
    if length == 0xFFFFFFFF:
        osize, at = 8, at + 8
    (version,) = struct.unpack_from("<H", lines, at)
    at += 2
    if version >= 5:
        at += 2  # address_size, segment_selector_size
    at += osize + 4  # header_length; min_inst_length, max_ops, default_is_stmt, line_base
    if version < 4:
        at -= 1  # no maximum_operations_per_instruction before DWARF 4
    at += 1  # line_range
    opcode_base = lines[at]
    at += opcode_base  # opcode_base itself and standard_opcode_lengths
    if version < 5:
        dirs, at = _strings(lines, at)
        dirs.insert(0, "")
        files = []
        while lines[at]:
            name_end = lines.index(b"\0", at)
            name = lines[at:name_end].decode(errors="replace")
            d, at = _uleb(lines, name_end + 1)
            _, at = _uleb(lines, at)
            _, at = _uleb(lines, at)
            files.append(posixpath.normpath(posixpath.join(dirs[d] if d < len(dirs) else "", name)))
        return files
    dirs_v5, at = _entries(lines, at, osize, relocs, strs)
    files_v5, at = _entries(lines, at, osize, relocs, strs)
    names = [e.get(DW_LNCT_path, "") for e in dirs_v5]
    out = []
    for e in files_v5:
        d = e.get(DW_LNCT_directory_index, 0)
        base = names[d] if isinstance(d, int) and d < len(names) else ""
        out.append(posixpath.normpath(posixpath.join(str(base), str(e.get(DW_LNCT_path, "")))))
    return out


def _strings(data: bytes, at: int) -> tuple[list[str], int]:
    out = []
    while data[at]:
        end = data.index(b"\0", at)
        out.append(data[at:end].decode(errors="replace"))
        at = end + 1
    return out, at + 1


def _entries(lines: bytes, at: int, osize: int, relocs, strs) -> tuple[list[dict], int]:
    """A DWARF 5 directory or file table: its format, then its entries (path and directory index kept)."""
    count = lines[at]
    at += 1
    fmt = []
    for _ in range(count):
        kind, at = _uleb(lines, at)
        form, at = _uleb(lines, at)
        fmt.append((kind, form))
    n, at = _uleb(lines, at)
    out = []
    for _ in range(n):
        entry: dict[int, str | int] = {}
        for kind, form in fmt:
            if kind == DW_LNCT_path:
                text = _string(lines, at, form, osize, relocs, strs)
                if text is None:
                    raise KeyError(form)
                entry[kind] = text
            elif kind == DW_LNCT_directory_index and form in (0x0B, 0x05, 0x0F):  # data1, data2, udata
                entry[kind] = (
                    _uleb(lines, at)[0] if form == 0x0F else int.from_bytes(lines[at : at + _FIXED[form]], "little")
                )
            at = _skip(lines, at, form, osize, 8, 0)
        out.append(entry)
    return out, at


def _abbrev(abbrev: bytes, off: int, code: int) -> list[tuple[int, int, int]] | None:
    """The (attribute, form, implicit const) list of abbreviation `code` in the table at `off`."""
    while off < len(abbrev):
        c, off = _uleb(abbrev, off)
        if c == 0:
            return None
        _, off = _uleb(abbrev, off)  # tag
        off += 1  # has children
        attrs = []
        while True:
            at, off = _uleb(abbrev, off)
            form, off = _uleb(abbrev, off)
            implicit = 0
            if form == DW_FORM_implicit_const:
                implicit, off = _uleb(abbrev, off)  # (sleb; its value is not needed)
            if at == 0 and form == 0:
                break
            attrs.append((at, form, implicit))
        if c == code:
            return attrs
    return None


def _skip(info: bytes, off: int, form: int, osize: int, addr_size: int, implicit: int) -> int:
    if form in _FIXED:
        return off + _FIXED[form]
    if form in _OFFSET:
        return off + osize
    if form == 0x01:  # addr
        return off + addr_size
    if form == DW_FORM_string:
        return info.index(b"\0", off) + 1
    if form in _LEB:
        while info[off] & 0x80:
            off += 1
        return off + 1
    if form in _BLOCK:
        n = _BLOCK[form]
        return off + n + int.from_bytes(info[off : off + n], "little")
    if form in (0x09, 0x18):  # block, exprloc
        n, off = _uleb(info, off)
        return off + n
    raise KeyError(form)


def build_id(data: bytes) -> str:
    """The hex GNU build-id of an ELF object held in memory, or ""."""
    try:
        elf = ELFFile(io.BytesIO(data))
        for sec in elf.iter_sections():
            if isinstance(sec, NoteSection):
                for note in sec.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                        return str(note["n_desc"])
    except ELFError:
        return ""
    return ""
