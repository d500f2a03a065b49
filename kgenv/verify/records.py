"""Verdict records of the verify stage: one per function, plus a summary; JSON-ready."""

from __future__ import annotations

from dataclasses import dataclass, field

IDENTICAL = "identical"
DIFFERS = "differs"
MISSING = "missing"
AMBIGUOUS = "ambiguous"
NOT_TRACEABLE = "not-traceable"
WEAK_OVERRIDDEN = "weak-overridden"
VERDICTS = (IDENTICAL, DIFFERS, MISSING, AMBIGUOUS, NOT_TRACEABLE, WEAK_OVERRIDDEN)

# reason classes for `differs`
REGISTER_ALLOCATION = "register-allocation"
INSTRUCTION_SELECTION = "instruction-selection"
LAYOUT_SIZE = "layout-size"
DIFFERENT_CALLEE = "different-callee"
DIFFERENT_DATA = "different-data-target"
COLD_SPLIT = "cold-split"
PADDING = "padding"
# not a difference: `identical` whose binary encodes some branches shorter (rel8 for rel32 + relocation)
MODULO_RELAXATION = "identical-modulo-relaxation"
REASONS = (
    REGISTER_ALLOCATION,
    INSTRUCTION_SELECTION,
    LAYOUT_SIZE,
    DIFFERENT_CALLEE,
    DIFFERENT_DATA,
    COLD_SPLIT,
    PADDING,
)


@dataclass(frozen=True)
class Difference:
    """The first differing instruction pair of a function."""

    offset: int
    object_insn: str
    binary_insn: str
    detail: str = ""

    def to_dict(self) -> dict:
        # Flat keys, so a function's record stays one level inside the report.
        return {
            "diff_offset": self.offset,
            "diff_object": self.object_insn,
            "diff_binary": self.binary_insn,
            "diff_detail": self.detail,
        }


@dataclass(frozen=True)
class FunctionVerdict:
    """What verify concluded about one function of a rebuilt object."""

    name: str
    tu: str
    verdict: str
    code_identical: bool = False
    reason: str = ""
    address: int | None = None
    size: int = 0
    sympos: int = 0
    section: str = ""
    binding: str = ""
    relocs_checked: int = 0
    data_refs: int = 0
    masked: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    trace: str = ""
    note: str = ""
    difference: Difference | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == IDENTICAL

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "tu": self.tu,
            "verdict": self.verdict,
            "code_identical": self.code_identical,
            "reason": self.reason,
            "address": self.address,
            "size": self.size,
            "sympos": self.sympos,
            "section": self.section,
            "binding": self.binding,
            "relocs_checked": self.relocs_checked,
            "data_refs": self.data_refs,
            "masked": list(self.masked),
            "candidates": list(self.candidates),
            "trace": self.trace,
            "note": self.note,
            **(self.difference or Difference(-1, "", "")).to_dict(),
        }


@dataclass(frozen=True)
class Summary:
    """Counts by verdict overall and per TU."""

    total: int
    by_verdict: dict[str, int] = field(default_factory=dict)
    by_tu: dict[str, dict[str, int]] = field(default_factory=dict)
    relocs_checked: int = 0

    @classmethod
    def of(cls, verdicts: list[FunctionVerdict]) -> Summary:
        by_verdict = {v: 0 for v in VERDICTS}
        by_tu: dict[str, dict[str, int]] = {}
        for v in verdicts:
            by_verdict[v.verdict] += 1
            tu = by_tu.setdefault(v.tu, {k: 0 for k in VERDICTS})
            tu[v.verdict] += 1
        return cls(len(verdicts), by_verdict, by_tu, sum(v.relocs_checked for v in verdicts))

    @property
    def all_ok(self) -> bool:
        """Every function identical and traceable (a replaced weak default is not in use: fine)."""
        return self.by_verdict.get(IDENTICAL, 0) + self.by_verdict.get(WEAK_OVERRIDDEN, 0) == self.total

    def to_dict(self) -> dict:
        """Overall counts, one level: total, relocs_checked and one key per verdict."""
        return {"total": self.total, "relocs_checked": self.relocs_checked, **self.by_verdict}
