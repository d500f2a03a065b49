"""Determinism evidence: verify every function of each rebuilt TU against the shipped binary and count."""

from __future__ import annotations

from kgenv.audit.rebuild import Built
from kgenv.audit.records import (
    FN_DIFFERS,
    FN_IDENTICAL,
    FN_SKIPPED,
    FN_UNMATCHED,
    TU_BUILD_FAILED,
    TU_DIFFERS,
    TU_EMPTY,
    TU_IDENTICAL,
    DisasmRow,
    FunctionDiff,
    TuResult,
)
from kgenv.elf.disasm import decode
from kgenv.errors import KgenvError
from kgenv.verify import verify_object
from kgenv.verify.mapping import OK, Mapper, ObjectFile
from kgenv.verify.records import AMBIGUOUS, DIFFERS, MISSING, WEAK_OVERRIDDEN, FunctionVerdict

# sections the linker throws away from vmlinux: their functions cannot be found there, by design
DISCARDED = (".exit.text", ".exit.", ".discard")
WINDOW = 8  # instructions of context on each side of the first difference


def outcome(v: FunctionVerdict) -> str:
    """How the audit counts one verify verdict."""
    if v.verdict == DIFFERS:
        return FN_DIFFERS
    if v.verdict in (WEAK_OVERRIDDEN, AMBIGUOUS):
        return FN_SKIPPED
    if v.verdict == MISSING:
        return FN_SKIPPED if v.section.startswith(DISCARDED) else FN_UNMATCHED
    return FN_IDENTICAL if v.code_identical else FN_DIFFERS


def _diff(v: FunctionVerdict, kind: str) -> FunctionDiff:
    d = v.difference
    if kind == FN_UNMATCHED:
        near = ", ".join(v.candidates[:4])
        return FunctionDiff(
            v.name,
            v.tu,
            kind,
            "absent from the shipped binary",
            v.size,
            detail=f"inlined or named differently{'; shipped has ' + near if near else ''}",
        )
    return FunctionDiff(
        v.name,
        v.tu,
        kind,
        v.reason or "code",
        v.size,
        d.offset if d else -1,
        d.object_insn if d else "",
        d.binary_insn if d else "",
        d.detail if d else "",
    )


def tu_evidence(built: Built, binary) -> tuple[TuResult, list[FunctionDiff], list[DisasmRow]]:
    """One TU's counts, its differing functions, and the disassembly around its first difference."""
    if built.object is None:
        return TuResult(built.tu, TU_BUILD_FAILED, error=built.error), [], []
    try:
        obj = ObjectFile(built.object, tu=built.tu)
        verdicts = verify_object(obj, binary)
    except KgenvError as e:
        return TuResult(built.tu, TU_BUILD_FAILED, error=f"unreadable object: {e}"), [], []
    counts = {FN_IDENTICAL: 0, FN_DIFFERS: 0, FN_UNMATCHED: 0, FN_SKIPPED: 0}
    diffs: list[FunctionDiff] = []
    for v in verdicts:
        kind = outcome(v)
        counts[kind] += 1
        if kind in (FN_DIFFERS, FN_UNMATCHED):
            diffs.append(_diff(v, kind))
    compared = counts[FN_IDENTICAL] + counts[FN_DIFFERS] + counts[FN_UNMATCHED]
    status = TU_EMPTY if not compared else TU_DIFFERS if diffs else TU_IDENTICAL
    first = next((d for d in diffs if d.outcome == FN_DIFFERS), diffs[0] if diffs else None)
    rows = _disasm(obj, binary, first) if first and first.outcome == FN_DIFFERS else []
    return (
        TuResult(
            built.tu,
            status,
            len(verdicts),
            counts[FN_IDENTICAL],
            counts[FN_DIFFERS],
            counts[FN_UNMATCHED],
            counts[FN_SKIPPED],
            first.name if first else "",
            first.reason if first else "",
        ),
        diffs,
        rows,
    )


def _disasm(obj: ObjectFile, binary, first: FunctionDiff) -> list[DisasmRow]:
    """Both sides decoded and aligned by instruction index around the first differing offset."""
    osym = next((s for s in obj.functions() if s.name == first.name), None)
    if osym is None:
        return []
    bsym, status = Mapper(obj, binary).resolve(osym)
    if status != OK or bsym is None:
        return []
    ocode = bytes(obj.index.code(osym))
    bcode = binary.code(bsym, max(bsym.size, 1)) or b""
    oi, bi = decode(ocode), decode(bcode)
    at = next((i for i, insn in enumerate(oi) if insn.offset <= max(first.offset, 0) < insn.offset + insn.size), 0)
    rows = []
    for i in range(max(0, at - WINDOW), min(max(len(oi), len(bi)), at + WINDOW + 1)):
        a = oi[i] if i < len(oi) else None
        b = bi[i] if i < len(bi) else None
        rows.append(
            DisasmRow(obj.tu, first.name, a.offset if a else (b.offset if b else -1), _show(a), _show(b), i < at)
        )
    return rows


def _show(insn) -> str:
    return f"{insn.text():<40} {insn.raw.hex()}" if insn is not None else "(end of function)"
