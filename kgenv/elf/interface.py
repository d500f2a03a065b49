"""What a compiled TU assumes about memory and calls, from its DWARF: the layout of every named type,
the values of enumerators, the prototypes of the functions it declares or defines, the types of its
file-scope variables. Two builds of one TU with different interfaces cannot share a running kernel's
objects (a struct member moved) or calls (a parameter added)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.common.exceptions import DWARFError, ELFError
from elftools.elf.elffile import ELFFile

from kgenv.errors import ToolError

TYPE, ENUMERATOR, FUNCTION, VARIABLE = "type", "enumerator", "function", "variable"
_AGGREGATES = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union", "DW_TAG_class_type": "class"}
_QUALIFIERS = {"DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type", "DW_TAG_atomic_type"}
_NUMBERED = "__UNIQUE_ID_"
_MAX_DEPTH = 24  # anonymous aggregates nest, named ones stop the recursion: deeper is a malformed object


@dataclass(frozen=True)
class Interface:
    """One TU's assumptions, each a description string keyed by kind and name."""

    entries: dict[tuple[str, str], str]
    defined_functions: frozenset[str]  # functions the TU defines (inline ones too)
    static_functions: frozenset[str]  # ... of them, those with internal linkage
    declared_in: dict[tuple[str, str], str]  # entry -> the file declaring it, relative to the source tree
    has_dwarf: bool = True


@dataclass(frozen=True)
class Difference:
    kind: str  # TYPE, ENUMERATOR, FUNCTION, VARIABLE
    name: str  # "struct bt_sock", "hid_report_raw_event"
    before: str
    after: str


def read(path: str | Path) -> Interface:
    """The interface of one object file; one-line ToolError for an unreadable DWARF."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_info") is None:
                return Interface({}, frozenset(), frozenset(), {}, has_dwarf=False)
            return _Reader().read(elf)
    except (ELFError, DWARFError, KeyError, ValueError, IndexError, AttributeError, TypeError, RecursionError) as e:
        raise ToolError(f"{path}: unreadable DWARF ({type(e).__name__}: {e})") from None


def differences(before: Interface, after: Interface) -> list[Difference]:
    """Entries both builds have, described differently. What only one side has is new or unused: the
    code that uses it changed, which the function comparison sees."""
    out = []
    for key in sorted(before.entries.keys() & after.entries.keys()):
        a, b = before.entries[key], after.entries[key]
        if a != b:
            out.append(Difference(key[0], key[1], a, b))
    return out


class _Reader:
    def __init__(self) -> None:
        self.memo: dict[int, str] = {}
        self.entries: dict[tuple[str, str], str] = {}
        self.defined: set[str] = set()
        self.statics: set[str] = set()
        self.declared_in: dict[tuple[str, str], str] = {}
        self.files: list[str] = []
        self.die: Any = None  # the top-level DIE being read: its decl_file is the entry's

    def read(self, elf: ELFFile) -> Interface:
        dwarf = elf.get_dwarf_info()
        for cu in dwarf.iter_CUs():
            self.files = _files(dwarf.line_program_for_CU(cu))
            for die in cu.get_top_DIE().iter_children():
                self.die = die
                self._top(die)
        return Interface(self.entries, frozenset(self.defined), frozenset(self.statics), self.declared_in)

    def _add(self, kind: str, name: str, desc: str) -> None:
        # two definitions under one name (a struct tag reused in two scopes): both, in a stable order
        old = self.entries.get((kind, name))
        if old is not None and old != desc:
            desc = " | ".join(sorted({*old.split(" | "), desc}))
        self.entries[(kind, name)] = desc
        index = _int(self.die, "DW_AT_decl_file") if self.die is not None else None
        if index is not None and 0 <= index < len(self.files):
            self.declared_in.setdefault((kind, name), self.files[index])

    def _top(self, die) -> None:
        tag, name = die.tag, _name(die)
        if tag in _AGGREGATES or tag == "DW_TAG_enumeration_type":
            self._type(die)
        elif tag == "DW_TAG_typedef" and name:
            self._add(TYPE, f"typedef {name}", self._desc(_target(die), 0, full=True))
        elif tag == "DW_TAG_subprogram" and name and "DW_AT_specification" not in die.attributes:
            self._add(FUNCTION, name, self._prototype(die))
            if not _flag(die, "DW_AT_declaration"):
                self.defined.add(name)
                if not _flag(die, "DW_AT_external"):
                    self.statics.add(name)
        elif tag == "DW_TAG_variable" and name.startswith(_NUMBERED):
            return  # __UNIQUE_ID_<x><counter>: one more macro use earlier renumbers them all
        elif tag == "DW_TAG_variable" and name and "DW_AT_specification" not in die.attributes:
            self._add(VARIABLE, name, self._desc(_target(die), 0))
        elif tag == "DW_TAG_variable" and "DW_AT_specification" in die.attributes:
            spec = die.get_DIE_from_attribute("DW_AT_specification")
            if _name(spec):
                self._add(VARIABLE, _name(spec), self._desc(_target(spec), 0))

    def _type(self, die) -> None:
        """A named struct/union/enum, and the enumerators of any enum (kernel constants are mostly
        anonymous enums); a nested one is reached through its users."""
        name = _name(die)
        if _flag(die, "DW_AT_declaration"):
            return
        kind = "enum" if die.tag == "DW_TAG_enumeration_type" else _AGGREGATES[die.tag]
        if name:
            self._add(TYPE, f"{kind} {name}", self._layout(die, 0))
        if kind == "enum":
            for e in die.iter_children():
                if e.tag == "DW_TAG_enumerator" and _name(e):
                    self._add(ENUMERATOR, _name(e), str(e.attributes["DW_AT_const_value"].value))

    def _layout(self, die, depth: int) -> str:
        """An aggregate as memory sees it: size, then each member's place, width and type."""
        size = _int(die, "DW_AT_byte_size")
        if die.tag == "DW_TAG_enumeration_type":
            return f"enum size={size} base={self._desc(_target(die), depth + 1)}"
        parts = []
        for m in die.iter_children():
            if m.tag != "DW_TAG_member":
                continue
            where = _int(m, "DW_AT_data_member_location")
            bits = _int(m, "DW_AT_data_bit_offset")
            width = _int(m, "DW_AT_bit_size")
            place = f"@bit{bits}" if bits is not None else f"@{where}" if where is not None else ""
            if width is not None:
                place += f":{width}"
            parts.append(f"{_name(m) or '<anon>'}{place} {self._desc(_target(m), depth + 1, full=True)}")
        return f"size={size} {{{'; '.join(parts)}}}"

    def _prototype(self, die) -> str:
        params = []
        for p in die.iter_children():
            if p.tag == "DW_TAG_formal_parameter":
                params.append(self._desc(_target(p), 0))
            elif p.tag == "DW_TAG_unspecified_parameters":
                params.append("...")
        return f"{self._desc(_target(die), 0)} ({', '.join(params)})"

    def _desc(self, die, depth: int, full: bool = False) -> str:
        """A type as a string: named aggregates, enums and typedefs by name (their own entries hold
        their layout), anonymous ones in full, because they are part of their user's layout."""
        if die is None:
            return "void"
        if depth > _MAX_DEPTH:
            raise ValueError(f"type nesting deeper than {_MAX_DEPTH} at DIE {die.offset:#x}")
        key = die.offset * 2 + full
        if key not in self.memo:
            self.memo[key] = self._describe(die, depth, full)
        return self.memo[key]

    def _describe(self, die, depth: int, full: bool) -> str:
        tag, name = die.tag, _name(die)
        if tag == "DW_TAG_base_type":
            return f"{name}/{_int(die, 'DW_AT_byte_size')}"
        if tag == "DW_TAG_pointer_type":
            return self._desc(_target(die), depth + 1) + "*"
        if tag in _QUALIFIERS or tag == "DW_TAG_typedef":
            # what the bytes are: a qualifier or a typedef's name changes neither layout nor calling
            # convention (a typedef's own definition is compared under its name)
            return self._desc(_target(die), depth + 1, full)
        if tag in _AGGREGATES or tag == "DW_TAG_enumeration_type":
            kind = "enum" if tag == "DW_TAG_enumeration_type" else _AGGREGATES[tag]
            if name:
                return f"{kind} {name}"
            return f"{kind} {self._layout(die, depth + 1)}" if full else f"{kind} <anon>"
        if tag == "DW_TAG_array_type":
            dims = "".join(f"[{_count(s)}]" for s in die.iter_children() if s.tag == "DW_TAG_subrange_type")
            return self._desc(_target(die), depth + 1, full) + dims
        if tag == "DW_TAG_subroutine_type":
            return f"fn {self._prototype(die)}"
        return tag.removeprefix("DW_TAG_") + (f" {name}" if name else "")


def _files(lineprog) -> list[str]:
    """The unit's file table as paths relative to the source tree (gcc writes them so)."""
    if lineprog is None:
        return []
    dirs = [d.decode(errors="replace") for d in lineprog.header.include_directory]
    version = lineprog.header.version
    out = []
    for fe in lineprog.header.file_entry:
        i = fe.dir_index if version >= 5 else fe.dir_index - 1  # DWARF < 5: 1-based, 0 = the unit's dir
        d = dirs[i] if 0 <= i < len(dirs) else ""
        out.append(posixpath.normpath(posixpath.join(d, fe.name.decode(errors="replace"))))
    if version < 5:
        out.insert(0, "")  # DWARF < 5 numbers files from 1
    return out


def _name(die) -> str:
    a = die.attributes.get("DW_AT_name")
    return a.value.decode(errors="replace") if a is not None and isinstance(a.value, bytes) else ""


def _flag(die, attr: str) -> bool:
    a = die.attributes.get(attr)
    return bool(a is not None and a.value)


def _int(die, attr: str) -> int | None:
    a = die.attributes.get(attr)
    return a.value if a is not None and isinstance(a.value, int) else None


def _target(die):
    return die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None


def _count(subrange) -> str:
    count = _int(subrange, "DW_AT_count")
    if count is None:
        upper = _int(subrange, "DW_AT_upper_bound")
        count = upper + 1 if upper is not None else None
    return "" if not count else str(count)  # a flexible array: [] and [0] alike
