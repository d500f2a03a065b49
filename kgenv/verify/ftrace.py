"""ftrace call-site check on the running binary: fentry call or NOP at entry, listed in __mcount_loc."""

from __future__ import annotations

from dataclasses import dataclass

from kgenv.elf.relocs import R_X86_64_PC32, R_X86_64_PLT32
from kgenv.elf.symbols import Symbol
from kgenv.verify.code import ENDBR64, NOP5
from kgenv.verify.sources import Binary


@dataclass(frozen=True)
class TraceResult:
    """Whether ftrace (and so livepatch) can attach to a function, and why not."""

    traceable: bool
    detail: str
    site_offset: int = -1


def check(binary: Binary, sym: Symbol) -> TraceResult:
    """Run every ftrace condition on one binary function."""
    region = binary.region(sym)
    if region:
        return TraceResult(False, f"in {region}, which ftrace does not trace")
    entry = binary.code(sym, min(max(sym.size, 5), 9))
    if entry is None or len(entry) < 5:
        return TraceResult(False, "entry bytes unreadable")
    delta = 4 if entry[:4] == ENDBR64 else 0
    kind = _entry_kind(binary, sym, entry, delta)
    if kind is None:
        return TraceResult(False, "no __fentry__ call or NOP at entry (notrace)")
    if binary.kind == "live":
        # __mcount_loc lives in init data, freed after boot: the entry state is the evidence
        return TraceResult(True, f"entry {kind} (live; __mcount_loc freed after boot)", delta)
    if binary.site(sym, delta) not in binary.mcount_sites():
        return TraceResult(False, f"entry {kind} but the site is not in __mcount_loc", delta)
    return TraceResult(True, f"entry {kind}, in __mcount_loc", delta)


def _entry_kind(binary: Binary, sym: Symbol, entry: bytes, delta: int) -> str | None:
    insn = entry[delta : delta + 5]
    if len(insn) < 5:
        return None
    if insn == NOP5:
        return "nop5"
    if insn[0] != 0xE8:
        return None
    if not binary.linked:
        rel = [r for r in binary.relocs_in(sym) if r.offset == sym.value + delta + 1]
        if rel and rel[0].type in (R_X86_64_PC32, R_X86_64_PLT32):
            callee = binary.index.symbols[rel[0].sym]
            return "call __fentry__" if callee.name == "__fentry__" else None
        return None
    disp = int.from_bytes(insn[1:5], "little", signed=True)
    target = sym.value + delta + 5 + disp
    if binary.fentry is not None and target == binary.fentry:
        return "call __fentry__"
    if binary.kind == "live":
        return "call (ftrace enabled)"  # an active tracer replaced the NOP with its trampoline
    return None
