"""What a fix changes in a TU's interface with the rest of the running kernel: struct layouts,
enumerator values, variable types and function prototypes, read from the DWARF of the original and
the patched object. Code can be replaced; objects the running kernel already made cannot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kgenv.elf import interface
from kgenv.elf.interface import ENUMERATOR, FUNCTION, TYPE, VARIABLE, Difference, Interface

LAYOUT = "struct-layout-change"
SIGNATURE = "signature-change"


@dataclass
class Verdict:
    refusals: list[str] = field(default_factory=list)  # "class: why", one per entity
    # statics of the unit whose prototype changed: sound only when every caller is replaced too
    static_signatures: list[str] = field(default_factory=list)


def compare(source: str, original: Path, patched: Path, headers: set[str], defined: set[str]) -> Verdict:
    """`headers`: the headers the diff changes; `defined`: the functions the patched units define."""
    before, after = interface.read(original), interface.read(patched)
    v = Verdict()
    if not (before.has_dwarf and after.has_dwarf):
        v.refusals.append(f"{LAYOUT}: {source} was built without debug info: its struct layouts cannot be compared")
        return v
    for d in interface.differences(before, after):
        if d.kind == FUNCTION and d.name in before.static_functions and d.name in after.static_functions:
            v.static_signatures.append(d.name)
        elif d.kind == FUNCTION:
            v.refusals.append(
                f"{SIGNATURE}: the fix changes the prototype of {d.name} ({d.before} -> {d.after}); "
                "the running kernel's callers and definition keep the old one"
            )
        else:
            v.refusals.append(f"{LAYOUT}: the fix changes {_entity(d)} ({_what_changed(d)}); {_why(d.kind)}")
    v.refusals += _unseen(before, after, headers, defined)
    return v


def _unseen(before: Interface, after: Interface, headers: set[str], defined: set[str]) -> list[str]:
    """Types, variables and called functions only the patched unit uses, declared in a changed
    header: the original unit has no record of them to compare, so their change cannot be ruled out."""
    out = []
    defined = defined | after.defined_functions
    for key in sorted(after.entries.keys() - before.entries.keys()):
        kind, name = key
        where = after.declared_in.get(key, "")
        if kind == ENUMERATOR or where not in headers or (kind == FUNCTION and name in defined):
            continue
        cls = SIGNATURE if kind == FUNCTION else LAYOUT
        what = name if kind == TYPE else f"{kind} {name}"
        out.append(
            f"{cls}: {what}, declared in the changed {where}, is new to this unit: "
            "kgenv cannot compare it with what the running kernel was built with"
        )
    return out


def _entity(d: Difference) -> str:
    return {ENUMERATOR: f"enumerator {d.name}", VARIABLE: f"the type of {d.name}"}.get(d.kind, d.name)


def _why(kind: str) -> str:
    if kind == ENUMERATOR:
        return "values the running kernel stored keep their old meaning"
    if kind == VARIABLE:
        return "the running kernel's variable keeps its old type"
    return "objects the running kernel already made keep the old layout"


def _what_changed(d: Difference) -> str:
    if d.kind != TYPE:
        return f"{d.before} -> {d.after}"
    size_a, size_b = _size(d.before), _size(d.after)
    if size_a != size_b:
        return f"size {size_a} -> {size_b}"
    a, b = d.before.split("; "), d.after.split("; ")
    moved = [x for x in b if x not in a] or [x for x in a if x not in b]
    return f"member {moved[0].lstrip('{').split('@', 1)[0]}" if moved else "its members"


def _size(desc: str) -> str:
    head = desc.split(" ", 1)[0]
    return head.removeprefix("size=") if head.startswith("size=") else "?"
