"""Byte comparison of one function with relocation sites masked, then a check of every reloc target."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from kgenv.elf.disasm import decode, insn_at
from kgenv.elf.reader import SHF_MERGE, SHF_STRINGS
from kgenv.elf.relocs import PC_RELATIVE, R_X86_64_NONE, R_X86_64_PC32, R_X86_64_PLT32, WIDTH, Reloc, decode_value
from kgenv.elf.symbols import STB_LOCAL, STT_FUNC, STT_SECTION, Symbol, SymbolIndex
from kgenv.verify.mapping import OK, Mapper
from kgenv.verify.relax import INTERNAL, Alignment, align, branch_target, displacement_field, same_targets

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
    relaxed: tuple[str, ...] = ()  # branches the binary encodes shorter (equal modulo relaxation)


def _effective(relocs: list[Reloc]) -> list[Reloc]:
    """Relocations that write bytes: R_X86_64_NONE only annotates a site (.reloc), its bytes compare as they are."""
    return [r for r in relocs if r.type != R_X86_64_NONE]


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
        relocs = _effective(self.obj.relocs_in(osym))
        a, b = masked_pair(ocode, bcode, relocs, osym.value)
        masked, patched = self._runtime_masks(a, b, bcode, runtime_masks or {})
        size_differs = self.binary.kind != "live" and bsym.size != size
        diff = first_difference(a, b)
        if diff >= 0 or size_differs:
            first = CodeResult(False, max(diff, 0) if diff >= 0 else min(size, bsym.size), size_differs, masked=masked)
            # live images: kallsyms sizes are guesses and boot patches sit at object offsets; no relaxation there
            return (self._relaxed(osym, bsym, ocode, relocs) if self.binary.kind != "live" else None) or first
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

    def _relaxed(self, osym: Symbol, bsym: Symbol, ocode: bytes, relocs: list[Reloc]) -> CodeResult | None:
        """Equal modulo branch relaxation, or None (the plain comparison's result stands)."""
        bcode = self.binary.code(bsym, bsym.size)
        if not bcode:
            return None
        al = align(ocode, bcode, {r.offset - osym.value: r.width for r in relocs}, {})
        if isinstance(al, int) or not al.relaxed:
            return None
        at = {r.offset - osym.value: r for r in relocs}

        def otarget(insn):
            f = displacement_field(insn)
            r = at.get(f) if f is not None else None
            if f is None or r is None:
                return (INTERNAL, branch_target(insn))
            tsym = self.obj.symbol(r.sym)
            if tsym.type == STT_SECTION:
                base = self.mapper.base(tsym.shndx)
                start = base[1] if base is not None else None
            else:
                found, status = self.mapper.resolve(tsym)
                start = found.value if status == OK and found is not None else None
            if start is None:
                return ("unresolved", tsym.name)
            return ("addr", (start + r.addend + insn.offset + insn.size - r.offset + osym.value) & _MASK64)

        def btarget(insn):
            return ("addr", (bsym.value + (branch_target(insn) or 0)) & _MASK64)

        return _finish_relaxed(
            al, osym, relocs, otarget, btarget, self._show_key, self._check_mapped(osym, bsym, ocode, bcode, al)
        )

    def _show_key(self, key: tuple) -> str:
        if key and key[0] == "addr":
            return self._name_at(key[1])
        return " ".join(str(k) for k in key[1:])

    def _check_mapped(self, osym, bsym, ocode, bcode, al: Alignment):
        def check(r: Reloc, boff: int):
            inside = _self_target(self.obj.symbol(r.sym), r, osym, ocode, al)
            if inside is None:
                return self.check_target(r, osym, bsym, ocode, bcode, boff)
            # a reference into this very function (a label's address): the target moved with the relaxation
            k = _reach_k(r, ocode, r.offset - osym.value)
            value = decode_value(bcode, boff, r.type)
            got = value + bsym.value + boff + k if r.type in PC_RELATIVE else value
            if _same(got, bsym.value + inside, 64 if r.width == 8 else 32):
                return "code"
            return TargetMismatch(r.offset - osym.value, f"{osym.name}+{inside:#x}", self._name_at(got & _MASK64), True)

        return check

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

    def check_target(self, r: Reloc, osym: Symbol, bsym: Symbol, ocode: bytes, bcode: bytes, boff: int | None = None):
        """'code'/'data' when the binary encodes the object's target there, else a TargetMismatch.

        `boff`: where the site lies in the binary's function when branch relaxation moved it.
        """
        off = r.offset - osym.value
        boff = off if boff is None else boff
        site = bsym.value + boff
        value = decode_value(bcode, boff, r.type)
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


def _finish_relaxed(al: Alignment, osym: Symbol, relocs: list[Reloc], otarget, btarget, show, check) -> CodeResult:
    """Branch pairs reach the same places, then every other relocation is checked at its mapped offset."""
    relaxed = tuple(al.relaxed)
    bad = same_targets(al, osym.size, otarget, btarget)
    if bad is not None:
        a, b = bad
        miss = TargetMismatch(a.offset, show(otarget(a)), show(btarget(b)), True)
        return CodeResult(False, a.offset, False, miss, relaxed=relaxed)
    checked = data = 0
    for r in relocs:
        off = r.offset - osym.value
        if al.in_branch(off):
            checked += 1  # proved by same_targets
            continue
        outcome = check(r, al.to_binary(off))
        if isinstance(outcome, TargetMismatch):
            return CodeResult(False, outcome.offset, False, outcome, checked, data, relaxed=relaxed)
        checked += 1
        data += outcome == "data"
    return CodeResult(True, -1, False, None, checked, data, relaxed=relaxed)


_CALLS = {R_X86_64_PC32, R_X86_64_PLT32}


class ModuleComparer:
    """Compares against a relocatable module (.ko): sites are compared as relocation entries.

    A shipped .ko is an `ld -r` of many objects, so a target is compared by where it resolves in
    the module: a location `("at", section, S+A)` (a symbol defined in any of its objects, a section
    symbol + addend, or a call the link already resolved inside a section), an external name
    `("sym", name, A)` (undefined in the module: vmlinux or another module), or the bytes of a
    merged string `("string", bytes)`. The object's symbols are placed through the Mapper (locals
    pinned to the object's TU), so a same-named static of another object is never taken for ours.
    """

    def __init__(self, mapper: Mapper):
        self.mapper = mapper
        self.obj = mapper.obj
        self.binary = mapper.binary
        if not isinstance(mapper.binary.index, SymbolIndex):
            raise TypeError(f"{mapper.binary.path}: a module is compared through its ELF symbol table")
        self.bindex: SymbolIndex = mapper.binary.index

    def compare(
        self, osym: Symbol, bsym: Symbol, runtime_masks: dict[int, tuple[int, str]] | None = None
    ) -> CodeResult:
        size = osym.size
        ocode = bytes(self.obj.index.code(osym))
        bcode = self.binary.code(bsym, bsym.size)
        if bcode is None:
            return CodeResult(False, 0, True)
        orel = _effective(self.obj.relocs_in(osym))
        brel = _effective(self.binary.relocs_in(bsym))
        if bsym.size == size:
            a, b = masked_pair(ocode, bcode, orel, osym.value)
            a, b = masked_pair(bytes(a), bytes(b), brel, bsym.value)
            diff = first_difference(a, b)
            if diff < 0:
                bmap = {r.offset - bsym.value: r for r in brel}
                check = self._checker(osym, bsym, ocode, bcode, bmap)
                checked = data = 0
                for r in orel:
                    outcome = check(r, r.offset - osym.value)
                    if isinstance(outcome, TargetMismatch):
                        return CodeResult(False, outcome.offset, False, outcome, checked, data)
                    checked += 1
                    data += outcome == "data"
                if bmap:
                    return _extra_reloc(min(bmap), checked, data)
                return CodeResult(True, -1, False, None, checked, data)
            first = CodeResult(False, diff)
        else:
            first = CodeResult(False, min(size, bsym.size), True)
        return self._relaxed(osym, bsym, ocode, bcode, orel, brel) or first

    def _relaxed(self, osym, bsym, ocode, bcode, orel, brel) -> CodeResult | None:
        """Equal modulo branch relaxation, or None (the plain comparison's result stands)."""
        al = align(
            ocode,
            bcode,
            {r.offset - osym.value: r.width for r in orel},
            {r.offset - bsym.value: r.width for r in brel},
        )
        if isinstance(al, int) or not al.relaxed:
            return None
        oat = {r.offset - osym.value: r for r in orel}
        bmap = {r.offset - bsym.value: r for r in brel}

        def otarget(insn):
            f = displacement_field(insn)
            r = oat.get(f) if f is not None else None
            if f is None or r is None:
                return (INTERNAL, branch_target(insn))
            return _reach(self._obj_loc(r, f, ocode), insn.offset + insn.size - f)

        def btarget(insn):
            f = displacement_field(insn)
            r = bmap.pop(f, None) if f is not None else None
            if f is None or r is None:
                return ("at", bsym.shndx, bsym.value + (branch_target(insn) or 0))
            return _reach(self._bin_loc(r, f, bcode), insn.offset + insn.size - f)

        result = _finish_relaxed(
            al, osym, orel, otarget, btarget, self._describe, self._checker(osym, bsym, ocode, bcode, bmap, al)
        )
        if result.identical and bmap:
            return _extra_reloc(min(bmap), result.relocs_checked, result.data_refs)
        return result

    def _checker(
        self,
        osym: Symbol,
        bsym: Symbol,
        ocode: bytes,
        bcode: bytes,
        bmap: dict[int, Reloc],
        al: Alignment | None = None,
    ):
        """A check of one object relocation against the binary's at `boff` (popped from bmap)."""

        def check(r: Reloc, boff: int):
            off = r.offset - osym.value
            other = bmap.pop(boff, None)
            inside = _self_target(self.obj.symbol(r.sym), r, osym, ocode, al) if al is not None else None
            if inside is None:
                want = self._obj_loc(r, off, ocode)
            else:  # a reference into this very function: the target moved with the relaxation
                want = ("at", bsym.shndx, bsym.value + inside - _reach_k(r, ocode, off))
            if other is None:
                if r.type not in _CALLS:
                    got: tuple = ("no relocation",)
                else:  # the .ko's own link resolved a reference within its section: where does it point?
                    got = ("at", bsym.shndx, bsym.value + boff + decode_value(bcode, boff, r.type))
            elif other.type != r.type:
                got = ("relocation type", other.type)
            else:
                got = self._bin_loc(other, boff, bcode)
            if not self._agrees(want, got):
                tsym = self.obj.symbol(r.sym)
                sec = self.obj.index.section_of(tsym)
                code = tsym.type == STT_FUNC or (sec is not None and sec.is_exec)
                shown = _show(_reloc_key(self.obj.index, r, off, ocode))
                return TargetMismatch(off, shown, self._describe(got, other, boff, bcode), code)
            return "data" if want[0] in ("string", "family", "const") else "code"

        return check

    def _agrees(self, want: tuple, got: tuple) -> bool:
        if want[0] == "family" and got[0] == "at":
            secs = self.bindex.elf.sections
            sec = secs[got[1]] if 0 < got[1] < len(secs) else None
            return sec is not None and _family(sec.name) == want[1]
        return want[0] in ("at", "sym", "string", "const") and want == got

    def _obj_loc(self, r: Reloc, off: int, ocode: bytes) -> tuple:
        """Where an object relocation points, placed in the module (see the class docstring)."""
        t = self.obj.symbol(r.sym)
        const = _merged_const(self.obj.index, t, r, ocode, off)
        if const is not None:
            return const
        if t.type == STT_SECTION:
            sec = self.obj.index.section_of(t)
            if sec is None:
                return ("unresolved", t.name)
            if sec.flags & SHF_MERGE and sec.flags & SHF_STRINGS:
                return ("string", _string(self.obj.index, sec, r.addend + _reach_k(r, ocode, off)))
            base = self.mapper.base(t.shndx)
            if base is not None:
                return ("at", base[0], base[1] + r.addend)
            target = r.addend + _reach_k(r, ocode, off)
            holder = self.obj.index.containing(t.shndx, target)
            found, status = self.mapper.resolve(holder) if holder is not None else (None, "")
            if holder is not None and status == OK and found is not None:
                return ("at", found.shndx, found.value - holder.value + r.addend)
            return ("family", _family(sec.name))
        if not t.defined:
            mine = [c for c in self.binary.lookup(t.name) if c.bind != STB_LOCAL]
            if len(mine) == 1:
                return ("at", mine[0].shndx, mine[0].value + r.addend)
            return ("sym", t.name, r.addend) if not mine else ("unresolved", t.name)
        found, status = self.mapper.resolve(t)
        if status == OK and found is not None:
            return ("at", found.shndx, found.value + r.addend)
        return ("unresolved", t.name)

    def _bin_loc(self, r: Reloc, off: int, code: bytes) -> tuple:
        """Where a relocation of the module points (the same forms as _obj_loc)."""
        index = self.bindex
        if not 0 <= r.sym < len(index.symbols):
            return ("bad symbol", r.sym)
        t = index.symbols[r.sym]
        if t.type == STT_SECTION:
            sec = index.section_of(t)
            if sec is not None and sec.flags & SHF_MERGE and sec.flags & SHF_STRINGS:
                return ("string", _string(index, sec, r.addend + _reach_k(r, code, off)))
        const = _merged_const(index, t, r, code, off)
        if const is not None:
            return const
        if t.type == STT_SECTION:
            return ("at", t.shndx, t.value + r.addend)
        if not t.defined:
            return ("sym", t.name, r.addend)
        return ("at", t.shndx, t.value + r.addend)

    def _describe(self, key: tuple, other: Reloc | None = None, off: int = 0, code: bytes = b"") -> str:
        """A readable name of a placed target, for messages."""
        if key and key[0] == "at":
            holder = self.bindex.containing(key[1], key[2] + 4) or self.bindex.containing(key[1], key[2])
            if holder is not None:
                return f"{holder.name}+{key[2] - holder.value:#x}".replace("+-", "-")
            return f"section {key[1]}+{key[2]:#x}"
        if key and key[0] == "sym":
            return f"{key[1]} {key[2]}"
        if other is not None and key and key[0] != "string":
            return _show(_reloc_key(self.bindex, other, off, code))
        return " ".join(str(k) for k in key)


def _self_target(tsym: Symbol, r: Reloc, osym: Symbol, ocode: bytes, al: Alignment) -> int | None:
    """The binary offset a relocation into the function itself reaches after relaxation, else None."""
    if tsym.shndx != osym.shndx or tsym.type not in (STT_SECTION, STT_FUNC):
        return None
    target = tsym.value + r.addend + _reach_k(r, ocode, r.offset - osym.value) - osym.value
    if not 0 <= target < osym.size or target not in al.omap:
        return None
    return al.omap[target]


def _reach(loc: tuple, k: int) -> tuple:
    """A relocation's S+A turned into the place its branch reaches (S + A + field-to-end)."""
    if loc[0] == "at":
        return ("at", loc[1], loc[2] + k)
    if loc[0] == "sym":
        return ("sym", loc[1], loc[2] + k)
    return loc


def _reach_k(r: Reloc, code: bytes, off: int) -> int:
    """What a PC-relative field adds to reach its target (field to instruction end); 0 when absolute."""
    return _insn_end(code, off) - off if r.type in PC_RELATIVE else 0


def _string(index, sec, start: int) -> bytes | None:
    data = bytes(index.elf.section_data(sec))
    end = data.find(b"\0", start) if 0 <= start < len(data) else -1
    return data[start:end] if end >= 0 else None


def _merged_const(index, t: Symbol, r: Reloc, code: bytes, off: int) -> tuple | None:
    """A reference into a merged constant pool (`.rodata.cst2/4/8/16`: SHF_MERGE, fixed entsize, no
    strings) by the constant it reads, ("const", entsize, bytes); None for any other target.
    `ld -r` merges the pools of a module's objects (equal constants share one slot) and the
    assembler names such a target by a local `.LCn` label, so only the value is comparable, as
    for merged strings."""
    if not t.defined:
        return None
    sec = index.section_of(t)
    if sec is None or not sec.flags & SHF_MERGE or sec.flags & SHF_STRINGS or sec.entsize <= 0:
        return None
    start = t.value + r.addend + _reach_k(r, code, off)
    data = bytes(index.elf.section_data(sec))
    if not 0 <= start <= len(data) - sec.entsize:
        return None
    return ("const", sec.entsize, data[start : start + sec.entsize])


def _extra_reloc(off: int, checked: int, data: int) -> CodeResult:
    miss = TargetMismatch(off, "no relocation", "relocation", False)
    return CodeResult(False, off, False, miss, checked, data)


def _insn_end(code: bytes, off: int) -> int:
    insn = insn_at(decode(code), off)
    return insn.offset + insn.size if insn is not None else off + 4


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
