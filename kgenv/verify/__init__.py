"""The verify stage: prove, per function, that a rebuilt object equals the running binary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kgenv.elf.symbols import STB_GLOBAL, STB_WEAK, Symbol
from kgenv.verify import ftrace
from kgenv.verify.code import CodeResult, LinkedComparer, ModuleComparer
from kgenv.verify.mapping import AMBIGUOUS, MISSING, Mapper, ObjectFile
from kgenv.verify.patchsites import function_masks, patch_sites
from kgenv.verify.reasons import classify
from kgenv.verify.records import (
    AMBIGUOUS as V_AMBIGUOUS,
)
from kgenv.verify.records import (
    DIFFERS,
    IDENTICAL,
    MODULO_RELAXATION,
    NOT_TRACEABLE,
    WEAK_OVERRIDDEN,
    Difference,
    FunctionVerdict,
    Summary,
)
from kgenv.verify.records import (
    MISSING as V_MISSING,
)
from kgenv.verify.sources import Binary, LiveBinary, base_name, open_binary

__all__ = ["verify", "Report", "CHECKS", "open_binary", "LiveBinary", "ObjectFile"]


@dataclass
class _Work:
    """Scratch state of one function passing through the checks (not a record)."""

    obj: ObjectFile
    mapper: Mapper
    comparer: LinkedComparer | ModuleComparer
    osym: Symbol
    bsym: Symbol | None = None
    code: CodeResult | None = None
    sites: dict | None = None

    @property
    def found(self) -> Symbol:
        """The binary's copy, for the checks that run once `resolve` has found it."""
        if self.bsym is None:
            raise RuntimeError(f"{self.obj.path}: {self.osym.name}: checked before it was resolved")
        return self.bsym

    def verdict(
        self,
        verdict: str,
        *,
        reason: str = "",
        candidates: tuple[str, ...] = (),
        trace: str = "",
        note: str = "",
        difference: Difference | None = None,
    ) -> FunctionVerdict:
        b, c = self.bsym, self.code
        if c is not None and c.identical and c.relaxed and not reason:
            # equal instruction for instruction, each relaxed branch proved to reach the same target
            reason = MODULO_RELAXATION
            note = note or f"branches relaxed in the binary: {', '.join(c.relaxed[:4])}" + (
                f" (+{len(c.relaxed) - 4})" if len(c.relaxed) > 4 else ""
            )
        return FunctionVerdict(
            name=self.osym.name,
            tu=self.obj.tu,
            verdict=verdict,
            size=self.osym.size,
            binding=self.osym.binding,
            section=self.osym.section,
            address=b.value if b is not None else None,
            sympos=b.sympos if b is not None else 0,
            code_identical=c.identical if c is not None else False,
            relocs_checked=c.relocs_checked if c is not None else 0,
            data_refs=c.data_refs if c is not None else 0,
            masked=c.masked if c is not None else (),
            reason=reason,
            candidates=candidates,
            trace=trace,
            note=note,
            difference=difference,
        )


def _resolve(w: _Work) -> FunctionVerdict | None:
    """Find the binary's copy: missing (inlined/renamed) or ambiguous stop here."""
    bsym, status = w.mapper.resolve(w.osym)
    if status == MISSING:
        return w.verdict(
            V_MISSING, candidates=tuple(_clone_candidates(w)), note="not in the binary: inlined, renamed or discarded"
        )
    if status == AMBIGUOUS:
        copies = tuple(
            f"{s.name} sympos={s.sympos} file={s.file or '?'}" for s in w.mapper.binary.functions(w.osym.name)
        )
        return w.verdict(V_AMBIGUOUS, candidates=copies, note="several copies and the object's TU cannot be pinned")
    w.bsym = bsym
    return None


def _clone_candidates(w: _Work) -> list[str]:
    base = base_name(w.osym.name)
    names = list(w.mapper.binary.clones.get(base, []))
    if base != w.osym.name and w.mapper.binary.functions(base):
        names.insert(0, base)
    return sorted(n for n in names if n != w.osym.name)


def _weak(w: _Work) -> FunctionVerdict | None:
    """A __weak default replaced at link time by a strong definition elsewhere."""
    if w.osym.bind != STB_WEAK:
        return None
    if w.found.bind == STB_GLOBAL:
        return w.verdict(WEAK_OVERRIDDEN, note="a strong definition elsewhere replaced this weak one")
    base = w.mapper.base(w.osym.shndx)
    if base is not None and w.mapper.binary.linked and base[1] + w.osym.value != w.found.value:
        return w.verdict(WEAK_OVERRIDDEN, note="another TU's weak definition was linked")
    return None


def _code(w: _Work) -> FunctionVerdict | None:
    """Masked byte compare, then relocation targets; Capstone names the first difference."""
    masks = None
    if w.mapper.binary.kind == "live":
        if w.sites is None:
            w.sites = patch_sites(w.obj)
        masks = function_masks(w.sites, w.osym.shndx, w.osym.value, w.osym.size)
    bsym = w.found
    w.code = w.comparer.compare(w.osym, bsym, masks)
    if w.code.identical:
        return None
    ocode = bytes(w.obj.index.code(w.osym))
    bcode = w.mapper.binary.code(bsym, max(bsym.size, 1) if w.mapper.binary.kind != "live" else w.osym.size) or b""
    reason, diff = classify(ocode, bcode, w.code, w.osym.value, bsym.value)
    return w.verdict(DIFFERS, reason=reason, difference=diff)


def _trace(w: _Work) -> FunctionVerdict | None:
    """ftrace must be able to attach at the entry (a .cold part has no entry of its own)."""
    if ".cold" in w.osym.name:
        return w.verdict(IDENTICAL, trace="cold part of its parent: no entry to trace")
    result = ftrace.check(w.mapper.binary, w.found)
    if not result.traceable:
        return w.verdict(NOT_TRACEABLE, trace=result.detail)
    return w.verdict(IDENTICAL, trace=result.detail)


# the ordered registry: each check either concludes (returns a verdict) or passes the function on
CHECKS: tuple[tuple[str, Callable[[_Work], FunctionVerdict | None]], ...] = (
    ("resolve", _resolve),
    ("weak", _weak),
    ("code", _code),
    ("ftrace", _trace),
)


@dataclass(frozen=True)
class Report:
    """All verdicts of one run and their summary."""

    binary: str
    verdicts: tuple[FunctionVerdict, ...]
    summary: Summary

    def to_dict(self) -> dict:
        # Two levels deep: summary and per-TU counts are tables of scalars, functions a list of flat records.
        return {
            "binary": self.binary,
            "summary": self.summary.to_dict(),
            "tus": {k: dict(v) for k, v in self.summary.by_tu.items()},
            "functions": [v.to_dict() for v in self.verdicts],
        }


def verify_object(obj: ObjectFile, binary: Binary, only: set[str] | None = None) -> list[FunctionVerdict]:
    """Run the checks over every function of one rebuilt object."""
    mapper = Mapper(obj, binary)
    comparer = LinkedComparer(mapper) if binary.linked else ModuleComparer(mapper)
    out, sites = [], None
    for osym in obj.functions():
        if only and osym.name not in only:
            continue
        w = _Work(obj, mapper, comparer, osym, sites=sites)
        for _name, check in CHECKS:
            verdict = check(w)
            if verdict is not None:
                out.append(verdict)
                break
        sites = w.sites
    return out


def verify(objects: list[str | Path | ObjectFile], binary: Binary | str | Path, only: set[str] | None = None) -> Report:
    """Verify rebuilt objects against a binary (a path to a vmlinux/.ko, or an opened Binary)."""
    if not isinstance(binary, Binary):
        binary = open_binary(binary)
    verdicts: list[FunctionVerdict] = []
    for obj in objects:
        if not isinstance(obj, ObjectFile):
            obj = ObjectFile(obj)
        verdicts.extend(verify_object(obj, binary, only))
    return Report(binary.path, tuple(verdicts), Summary.of(verdicts))
