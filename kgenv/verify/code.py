"""Byte comparison of one function with relocation sites masked, then a check of every reloc target."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from kgenv.elf.disasm import decode, insn_at
from kgenv.elf.reader import SHF_MERGE, SHF_STRINGS
from kgenv.elf.relocs import PC_RELATIVE, WIDTH, Reloc, decode_value
from kgenv.elf.symbols import STT_FUNC, STT_SECTION, Symbol
from kgenv.verify.mapping import OK, Mapper

NOP5 = b"\x0f\x1f\x44\x00\x00"
ENDBR64 = b"\xf3\x0f\x1e\xfa"


@dataclass(frozen=True)
class TargetMismatch:
    """A relocation whose target differs between the object and the binary."""

    offset: int  # from the function start
    wanted: str  # what the object's relocation names
    found: str  # what the binary encodes there
    code: bool  # target is code (a call/jump), not data


@dataclass(frozen=True)
class CodeResult:
    """Outcome of comparing one function's code."""

    identical: bool
    first_byte: int = -1  # first differing byte (masked compare), -1 if none
    size_differs: bool = False
    target: TargetMismatch | None = None
    relocs_checked: int = 0
    data_refs: int = 0
    masked: tuple[str, ...] = ()


def masked_pair(obj_code: bytes, bin_code: bytes, relocs: list[Reloc], start: int):
    """Both byte strings with every relocation site zeroed, the same offsets on both sides."""
    a, b = bytearray(obj_code), bytearray(bin_code)
    for r in relocs:
        o = r.offset - start
        w = WIDTH.get(r.type, 4)
        a[o : o + w] = bytes(w)
        b[o : o + w] = bytes(w)
    return a, b


def first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else -1


class LinkedComparer:
    """Compares against a binary with final addresses (vmlinux, kcore)."""

    def __init__(self, mapper: Mapper):
        self.mapper = mapper
        self.obj = mapper.obj
        self.binary = mapper.binary

    def compare(
        self, osym: Symbol, bsym: Symbol, runtime_masks: dict[int, tuple[int, str]] | None = None
    ) -> CodeResult:
        size = osym.size
        ocode = bytes(self.obj.index.code(osym))
        bcode = self.binary.code(bsym, size)
        if bcode is None:
            return CodeResult(False, 0, True)
        relocs = self.obj.relocs_in(osym)
        a, b = masked_pair(ocode, bcode, relocs, osym.value)
        masked, patched = self._runtime_masks(a, b, bcode, runtime_masks or {})
        size_differs = self.binary.kind != "live" and bsym.size != size
        diff = first_difference(a, b)
        if diff >= 0 or size_differs:
            return CodeResult(False, max(diff, 0) if diff >= 0 else min(size, bsym.size), size_differs, masked=masked)
        checked = data = 0
        for r in relocs:
            if any(lo <= r.offset - osym.value < hi for lo, hi in patched):
                continue  # the kernel rewrote this site at boot; its target is not comparable
            outcome = self.check_target(r, osym, bsym, ocode, bcode)
            if isinstance(outcome, TargetMismatch):
                return CodeResult(False, outcome.offset, False, outcome, checked, data, masked)
            checked += 1
            data += outcome == "data"
        return CodeResult(True, -1, False, None, checked, data, masked)

    @staticmethod
    def _runtime_masks(
        a: bytearray, b: bytearray, raw: bytes, masks: dict[int, tuple[int, str]]
    ) -> tuple[tuple[str, ...], list[tuple[int, int]]]:
        """Live images: sites the kernel patched at boot are masked; all but ftrace NOPs reported."""
        out, patched = [], []
        for off, (length, what) in sorted(masks.items()):
            if a[off : off + length] != b[off : off + length]:
                patched.append((off, off + length))
                if not (what == "__mcount_loc" and raw[off : off + 5] == NOP5):
                    out.append(f"{off:#x}:{what}")
            a[off : off + length] = bytes(length)
            b[off : off + length] = bytes(length)
        return tuple(out), patched

    def check_target(self, r: Reloc, osym: Symbol, bsym: Symbol, ocode: bytes, bcode: bytes):
        """'code'/'data' when the binary encodes the object's target there, else a TargetMismatch."""
        off = r.offset - osym.value
        site = bsym.value + off
        value = decode_value(bcode, off, r.type)
        actual = value + site - r.addend if r.type in PC_RELATIVE else value - r.addend
        tsym = self.obj.symbol(r.sym)
        bits = 64 if WIDTH.get(r.type, 4) == 8 else 32
        if tsym.type == STT_SECTION:
            return self._section_target(r, tsym, off, site, value, actual, bits, ocode)
        found, status = self.mapper.resolve(tsym)
        code = self._is_code(tsym)
        if status != OK or found is None:
            return TargetMismatch(off, f"{tsym.name}", f"{self._name_at(actual)} ({status} in binary)", code)
        if not _same(found.value, actual, bits):
            return TargetMismatch(off, tsym.name, self._name_at(actual), code)
        return "code" if code else "data-symbol"

    def _section_target(self, r, tsym, off, site, value, actual, bits, ocode):
        sec = self.obj.index.section_of(tsym)
        if sec is None:
            return TargetMismatch(off, tsym.name, "?", False)
        if sec.flags & SHF_MERGE and sec.flags & SHF_STRINGS:
            return self._string_target(r, sec, off, site, value, ocode)
        base = self.mapper.base(tsym.shndx)
        code = sec.is_exec
        if base is not None:
            if _same(base[1], actual, bits):
                return "code" if code else "data-symbol"
            return TargetMismatch(off, f"{sec.name}+{r.addend:#x}", self._name_at(actual), code)
        # no named symbol in that section resolves: the lighter check is the section family
        k = 4 if r.type in PC_RELATIVE else 0
        where = self.binary.section_at((actual + r.addend + k) & _MASK64)
        if _family(where) == _family(sec.name):
            return "data"
        return TargetMismatch(off, f"{sec.name}+{r.addend:#x}", where or f"{actual:#x}", code)

    def _string_target(self, r, sec, off, site, value, ocode):
        """Merged strings move; compare the string the object points at with the binary's."""
        ks = [4] if r.type in PC_RELATIVE else [0]
        if r.type in PC_RELATIVE:
            insn = insn_at(decode(ocode), off)
            if insn is not None:
                ks = [insn.offset + insn.size - off]
        data = bytes(self.obj.index.elf.section_data(sec))
        for k in ks:
            start = r.addend + k
            if not 0 <= start < len(data):
                continue
            want = data[start : data.find(b"\0", start)]
            addr = (value + site + k if r.type in PC_RELATIVE else value) & _MASK64
            if self.binary.read(addr, len(want) + 1) == want + b"\0":
                return "data"
        return TargetMismatch(off, f"string in {sec.name}", f"{value & _MASK64:#x}", False)

    def _is_code(self, tsym: Symbol) -> bool:
        if tsym.type == STT_FUNC:
            return True
        sec = self.obj.index.section_of(tsym)
        if sec is not None:
            return sec.is_exec
        return tsym.name.startswith(("__x86_", "__fentry__", "__SCT__"))

    def _name_at(self, addr: int) -> str:
        """The binary function covering an address, for messages."""
        return self._function_at(addr) or f"{addr:#x}"

    def _function_at(self, addr: int) -> str:
        table = self.binary.function_table
        i = bisect.bisect_right(table[0], addr) - 1
        if i < 0:
            return ""
        sym = table[1][i]
        if sym.value == addr:
            return sym.name
        if addr < sym.value + max(sym.size, 1):
            return f"{sym.name}+{addr - sym.value:#x}"
        return ""


_MASK64 = (1 << 64) - 1


def _same(a: int, b: int, bits: int) -> bool:
    mask = (1 << bits) - 1
    return (a & mask) == (b & mask)


def _family(name: str) -> str:
    """Coarse section family: .rodata.str1.1 and .rodata match, .text.unlikely and .text match."""
    parts = name.lstrip(".").split(".")
    return parts[0] if parts else name


class ModuleComparer:
    """Compares against a relocatable module (.ko): sites are compared as relocation entries."""

    def __init__(self, mapper: Mapper):
        self.mapper = mapper
        self.obj = mapper.obj
        self.binary = mapper.binary

    def compare(
        self, osym: Symbol, bsym: Symbol, runtime_masks: dict[int, tuple[int, str]] | None = None
    ) -> CodeResult:
        size = osym.size
        if bsym.size != size:
            return CodeResult(False, min(size, bsym.size), True)
        ocode = bytes(self.obj.index.code(osym))
        bcode = self.binary.code(bsym, size)
        if bcode is None:
            return CodeResult(False, 0, True)
        orel = self.obj.relocs_in(osym)
        brel = self.binary.relocs_in(bsym)
        a, b = masked_pair(ocode, bcode, orel, osym.value)
        a, b = masked_pair(bytes(a), bytes(b), brel, bsym.value)
        diff = first_difference(a, b)
        if diff >= 0:
            return CodeResult(False, diff)
        bmap = {r.offset - bsym.value: r for r in brel}
        checked = data = 0
        for r in orel:
            off = r.offset - osym.value
            other = bmap.pop(off, None)
            if other is None and r.type in PC_RELATIVE and WIDTH.get(r.type, 4) == 4:
                # the .ko's own link resolved a call/jump within its section: compare where both point
                want, got = _pointed(self.obj.index, r, osym, ocode), _resolved(self.binary.index, bsym, bcode, off)
                if want is None or want != got:
                    return CodeResult(
                        False,
                        off,
                        False,
                        TargetMismatch(off, _show(("", *(want or ("?",)))), _show(("", *(got or ("?",)))), True),
                        checked,
                        data,
                    )
                checked += 1
                continue
            want = _reloc_key(self.obj.index, r, off, ocode)
            got = _reloc_key(self.binary.index, other, off, bcode) if other else ("no relocation",)
            if other is None or other.type != r.type or want != got:
                code = want[0] == "code"
                return CodeResult(False, off, False, TargetMismatch(off, _show(want), _show(got), code), checked, data)
            checked += 1
            data += want[0] == "data"
        if bmap:
            off = min(bmap)
            return CodeResult(
                False, off, False, TargetMismatch(off, "no relocation", "relocation", False), checked, data
            )
        return CodeResult(True, -1, False, None, checked, data)


def _insn_end(code: bytes, off: int) -> int:
    insn = insn_at(decode(code), off)
    return insn.offset + insn.size if insn is not None else off + 4


def _pointed(index, r: Reloc, osym: Symbol, code: bytes) -> tuple | None:
    """(symbol, offset) a PC-relative relocation of the object makes its instruction reach."""
    if not 0 <= r.sym < len(index.symbols):
        return None
    off = r.offset - osym.value
    t = index.symbols[r.sym]
    reach = r.addend + _insn_end(code, off) - off
    if t.type != STT_SECTION:
        return (t.name, reach)
    holder = index.containing(t.shndx, reach)
    return (holder.name, reach - holder.value) if holder is not None else None


def _resolved(index, bsym: Symbol, code: bytes, off: int) -> tuple | None:
    """(symbol, offset) a PC-relative field the module's link already filled in reaches."""
    disp = int.from_bytes(code[off : off + 4], "little", signed=True)
    target = bsym.value + _insn_end(code, off) + disp
    holder = index.containing(bsym.shndx, target)
    return (holder.name, target - holder.value) if holder is not None else None


def _reloc_key(index, r: Reloc, off: int, code: bytes) -> tuple:
    """A file-independent name for a relocation target: symbol+addend, or what a section offset holds."""
    if not 0 <= r.sym < len(index.symbols):
        return ("bad", r.sym)
    t = index.symbols[r.sym]
    sec = index.section_of(t)
    kind = "code" if t.type == STT_FUNC or (sec is not None and sec.is_exec) else "sym"
    if t.type != STT_SECTION:
        return (kind, t.name, r.addend)
    if sec is None:
        return ("bad section", t.shndx)
    k = 4 if r.type in PC_RELATIVE else 0
    if r.type in PC_RELATIVE:
        insn = insn_at(decode(code), off)
        if insn is not None:
            k = insn.offset + insn.size - off
    target = r.addend + k
    if sec.flags & SHF_MERGE and sec.flags & SHF_STRINGS:
        data = bytes(index.elf.section_data(sec))
        end = data.find(b"\0", target) if 0 <= target < len(data) else -1
        return ("data", "string", data[target:end] if end >= 0 else None)
    holder = index.containing(t.shndx, target)
    if holder is not None:
        return (kind if kind == "code" else "data", holder.name, target - holder.value)
    return ("data", _family(sec.name), "unnamed")


def _show(key: tuple) -> str:
    return " ".join(str(k) for k in key[1:])
