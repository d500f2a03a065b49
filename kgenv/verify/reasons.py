"""Classify why a function differs, from the first differing instruction pair (Capstone)."""

from __future__ import annotations

import re

from kgenv.elf.disasm import Insn, decode, insn_at
from kgenv.verify.code import CodeResult
from kgenv.verify.records import (
    COLD_SPLIT,
    DIFFERENT_CALLEE,
    DIFFERENT_DATA,
    INSTRUCTION_SELECTION,
    LAYOUT_SIZE,
    PADDING,
    REGISTER_ALLOCATION,
    Difference,
)
from kgenv.verify.sources import base_name

_REG = re.compile(r"\b(?:[re]?[abcd]x|[abcd][lh]|[re]?[sd]il?|[re]?[sb]pl?|r\d+[dwb]?|[xyz]mm\d+)\b")
_PADDING = {"nop", "int3", "ud2"}


def classify(
    obj_code: bytes, bin_code: bytes, result: CodeResult, obj_base: int, bin_base: int
) -> tuple[str, Difference]:
    """(reason class, first differing pair) for a failed comparison."""
    if result.target is not None:
        return _target_reason(obj_code, bin_code, result, obj_base, bin_base)
    oi, bi = decode(obj_code, obj_base), decode(bin_code, bin_base)
    off = max(result.first_byte, 0)
    a, b = _pair(oi, bi, off)
    diff = Difference(off, _show(a), _show(b))
    if result.size_differs and _only_padding(oi, bi):
        return PADDING, diff
    if a is None or b is None:
        return LAYOUT_SIZE, diff
    if a.mnemonic != b.mnemonic:
        return INSTRUCTION_SELECTION, diff
    if _REG.sub("R", a.operands) == _REG.sub("R", b.operands) and a.operands != b.operands:
        if result.size_differs:
            return LAYOUT_SIZE, diff
        return REGISTER_ALLOCATION, diff
    if result.size_differs or a.size != b.size:
        return LAYOUT_SIZE, diff
    return INSTRUCTION_SELECTION, diff


def _target_reason(obj_code, bin_code, result, obj_base, bin_base):
    t = result.target
    oi, bi = decode(obj_code, obj_base), decode(bin_code, bin_base)
    a, b = insn_at(oi, t.offset), insn_at(bi, t.offset)
    detail = f"object targets {t.wanted}, binary targets {t.found}"
    diff = Difference(a.offset if a else t.offset, _show(a), _show(b), detail)
    branch = a is not None and (a.mnemonic.startswith(("call", "j")))
    if not (t.code or branch):
        return DIFFERENT_DATA, diff
    wanted, found = t.wanted.split("+")[0].split(" ")[0], t.found.split("+")[0].split(" ")[0]
    if ".cold" in wanted or ".cold" in found:
        if base_name(wanted) == base_name(found):
            return COLD_SPLIT, diff
    return DIFFERENT_CALLEE, diff


def _pair(oi: list[Insn], bi: list[Insn], off: int):
    a = insn_at(oi, off)
    b = insn_at(bi, a.offset if a else off)
    return a, b


def _only_padding(oi: list[Insn], bi: list[Insn]) -> bool:
    """The shorter side is a prefix of the longer one, which only adds padding."""
    short, long_ = (oi, bi) if len(oi) <= len(bi) else (bi, oi)
    if [i.raw for i in short] != [i.raw for i in long_[: len(short)]]:
        return False
    return all(i.mnemonic.split()[0] in _PADDING for i in long_[len(short) :])


def _show(insn: Insn | None) -> str:
    if insn is None:
        return "(end of function)"
    return f"{insn.text()}  [{insn.raw.hex()}]"
