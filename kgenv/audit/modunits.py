"""The C compile units of each shipped module, from the modules' DWARF (the `-dbg` package's copies).

A shipped `.ko` is stripped of its DWARF; Debian's `-dbg` package carries the same modules with it.
The package is read once as a stream (no module is unpacked to disk: ~5 GB for bookworm's 6.1),
every module's compile-unit names are taken from the top DIE of each unit, and the result is cached
by the kernel's build-id together with each module's own build-id. A vendor's own build dir ships
its modules unstripped: then they are read where they are.

Modules are relocatable objects (`ld -r` of their TUs): the offsets in a unit header and in its
top DIE are relocations (RELA, the field holds 0), so the few fields read here are resolved through
`.rela.debug_info` rather than by relocating the whole section.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import struct
import subprocess
import tarfile
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

from kgenv.errors import ToolError
from kgenv.fsutil import cache_dir, write_atomic
from kgenv.manifest import Manifest

FORMAT = 1  # bump when the cached record changes
DW_FORM_strp, DW_FORM_line_strp, DW_FORM_string, DW_FORM_indirect, DW_FORM_implicit_const = 0x0E, 0x1F, 0x08, 0x16, 0x21
DW_AT_name, DW_AT_producer = 0x03, 0x25
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
    elf = ELFFile(io.BytesIO(data))
    names = [s.name for s in elf.iter_sections()]
    secs = {s.name: s for s in elf.iter_sections()}
    info = secs.get(".debug_info")
    if info is None or info.header.sh_type == "SHT_NOBITS":
        return []

    def raw(name: str) -> bytes:
        s = secs.get(name)
        return s.data() if s is not None and s.header.sh_type != "SHT_NOBITS" else b""

    relocs = None
    if elf.header.e_type == "ET_REL" and ".rela.debug_info" in secs:
        relocs = _Relocs(raw(".rela.debug_info"), raw(".symtab"), names)
    strs = {".debug_str": raw(".debug_str"), ".debug_line_str": raw(".debug_line_str")}
    out = []
    for name, producer in _top_dies(info.data(), raw(".debug_abbrev"), relocs, strs):
        if producer.startswith("GNU C") and name.endswith(".c") and not name.startswith(("/", ".")):
            out.append(name)
    return sorted(set(out))


def _top_dies(info: bytes, abbrev: bytes, relocs: _Relocs | None, strs: dict[str, bytes]):
    """(DW_AT_name, DW_AT_producer) of each compile unit; a unit this reader cannot follow is skipped."""
    off = 0
    while off + 11 <= len(info):
        (length,) = struct.unpack_from("<I", info, off)
        osize, hdr = 4, off + 4
        if length == 0xFFFFFFFF:
            (length,) = struct.unpack_from("<Q", info, hdr)
            osize, hdr = 8, hdr + 8
        end = hdr + length
        if length == 0 or end > len(info):
            return
        try:
            found = _unit(info, hdr, osize, abbrev, relocs, strs)
        except (IndexError, ValueError, struct.error, KeyError):
            found = None
        if found:
            yield found
        off = end


def _offset(info: bytes, at: int, osize: int, relocs: _Relocs | None, default: str) -> tuple[str, int]:
    """An offset-sized field: through its relocation in a relocatable object, else as stored."""
    hit = relocs.at(at) if relocs else None
    if hit is not None:
        return hit
    return default, int.from_bytes(info[at : at + osize], "little")


def _unit(info: bytes, hdr: int, osize: int, abbrev: bytes, relocs, strs) -> tuple[str, str] | None:
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
    for at, form, implicit in attrs:
        if form == DW_FORM_indirect:
            form, die = _uleb(info, die)
        if at in (DW_AT_name, DW_AT_producer):
            if form == DW_FORM_string:
                nul = info.index(b"\0", die)
                got[at] = info[die:nul].decode()
            elif form in (DW_FORM_strp, DW_FORM_line_strp):
                default = ".debug_str" if form == DW_FORM_strp else ".debug_line_str"
                sec, pos = _offset(info, die, osize, relocs, default)
                table = strs.get(sec, b"")
                nul = table.index(b"\0", pos)
                got[at] = table[pos:nul].decode()
            else:
                return None  # strx & co: needs .debug_str_offsets (split DWARF); not what Kbuild makes
            if len(got) == 2:
                return got[DW_AT_name], got[DW_AT_producer]
        die = _skip(info, die, form, osize, addr_size, implicit)
    return None


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


def module_name(path: str) -> str:
    """The module's name as the kernel knows it: the file name without .ko, '-' read as '_'."""
    return PurePosixPath(path).name.removesuffix(".ko").replace("-", "_")


def record(path: str, data: bytes) -> dict:
    """One module's cache entry."""
    try:
        units = compile_units(data)
    except ELFError as e:
        raise ToolError(f"{path}: cannot read its DWARF: {e}") from None
    return {"path": path, "build_id": build_id(data), "units": units}


def cache_path(m: Manifest) -> Path:
    return cache_dir() / "audit" / f"modunits-{m.kernel.build_id or 'unknown'}.json"


def cached(m: Manifest) -> dict[str, dict] | None:
    """The module → {path, build_id, units} map when it is cached (never reads a package)."""
    p = cache_path(m)
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return d.get("modules") if isinstance(d, dict) and d.get("format") == FORMAT else None


def module_units(m: Manifest, shipped: dict[str, Path], progress=None) -> tuple[dict[str, dict], str]:
    """The module map (cached by build-id) and where it came from: 'dbg-package', 'modules' (unstripped
    shipped modules), or '' with the reason when no module DWARF can be found."""
    found = cached(m)
    if found is not None:
        return found, ""
    if not shipped:
        return {}, "no shipped modules"
    first = next(iter(shipped.values()))
    if first.is_file() and compile_units(first.read_bytes()):
        modules = _from_files(shipped, progress)
        source = "modules"
    else:
        deb = dbg_deb(m)
        if deb is None:
            return {}, "no DWARF for the modules: neither unstripped modules nor the -dbg package in the cache"
        modules = _from_deb(m, deb, set(shipped), progress)
        source = f"debs/{deb.name}"
    write_atomic(cache_path(m), json.dumps({"format": FORMAT, "source": source, "modules": modules}, sort_keys=True))
    return modules, ""


def _from_files(shipped: dict[str, Path], progress) -> dict[str, dict]:
    out = {}
    for i, (name, ko) in enumerate(sorted(shipped.items()), 1):
        if progress:
            progress.tick(f"module units {i}/{len(shipped)}: {name}")
        out[name] = record(str(ko), ko.read_bytes())
    return out


def dbg_deb(m: Manifest) -> Path | None:
    """The env's `-dbg` package in the download cache, named by the vmlinux's recorded package."""
    ref = m.files.get("vmlinux")
    if ref is None or "=" not in ref.package:
        return None
    name, version = ref.package.split("=", 1)
    hits = sorted((cache_dir() / "debs").glob(f"{name}_{version.split(':', 1)[-1]}_*.deb"))
    return hits[0] if hits else None


def _from_deb(m: Manifest, deb: Path, wanted: set[str], progress) -> dict[str, dict]:
    """Stream the package once; the vmlinux in it must be the env's (sha256), so the modules are its twins."""
    prefix = f"./usr/lib/debug/lib/modules/{m.kernel.release}/"
    vmlinux = m.file_ref("vmlinux")
    out: dict[str, dict] = {}
    seen_vmlinux = False
    if progress:
        progress.step(f"read module DWARF from {deb.name} (once per kernel)")
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = "./" + member.name.removeprefix("./")
                is_vmlinux = name == f"./usr/lib/debug/boot/{PurePosixPath(vmlinux.path).name}"
                if not (is_vmlinux or (name.startswith(prefix) and name.endswith(".ko"))):
                    continue
                f = tar.extractfile(member)
                if f is None:
                    continue
                if is_vmlinux:
                    h = hashlib.sha256()
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
                    if h.hexdigest() != vmlinux.sha256:
                        raise ToolError(f"{deb}: its vmlinux is not env {m.name}'s (sha256 differs)")
                    seen_vmlinux = True
                    continue
                mod = module_name(name)
                if mod not in wanted:
                    continue
                if progress:
                    progress.tick(f"module units: {len(out)}/{len(wanted)} {mod}")
                out[mod] = record(name.removeprefix(prefix), f.read())
    except (tarfile.TarError, OSError) as e:
        raise ToolError(f"{deb}: cannot read: {e}") from None
    finally:
        if proc.stdout:
            proc.stdout.close()
        proc.wait()
    if proc.returncode:
        raise ToolError(f"{deb}: dpkg-deb --fsys-tarfile failed (exit {proc.returncode})")
    if not seen_vmlinux:
        raise ToolError(f"{deb}: holds no vmlinux matching env {m.name}'s")
    return out
