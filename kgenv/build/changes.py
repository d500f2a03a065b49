"""Which functions and variables a fix changed: one TU's original and patched objects compared."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from kgenv.elf.disasm import decode, insn_at
from kgenv.elf.reader import SHF_ALLOC, SHF_MERGE, SHF_STRINGS, SHT_NOBITS, SHT_RELA
from kgenv.elf.relocs import PC_RELATIVE, Reloc, relocations
from kgenv.elf.special import ALTINSTRUCTIONS, LAYOUTS, TableEntry, TableLayout, points_at, table_entries
from kgenv.elf.symbols import STB_LOCAL, STT_OBJECT, STT_SECTION, Symbol
from kgenv.verify.code import masked_pair
from kgenv.verify.mapping import ObjectFile

UNCHANGED, CHANGED, NEW, REMOVED = "unchanged", "changed", "new", "removed"
SHF_WRITE = 0x1
BUG_TABLE = "__bug_table"
# struct bug_entry on x86-64 (relative pointers, verbose): addr disp32, file disp32, line u16, flags u16
BUG_ENTRY, BUG_LINE, BUG_FLAGS = 12, 8, 10

_CLONE = re.compile(r"\.(isra|constprop|part|cold|lto_priv|localalias|clone)\.\d+")
_LOCAL_NUMBER = re.compile(r"\.\d+$")
# __UNIQUE_ID(prefix) pastes __COUNTER__ on: one more use anywhere earlier renumbers every later one
_UNIQUE_ID = re.compile(r"^(__UNIQUE_ID_\w*?)\d+(?=$|\.)")
# dynamic-debug descriptors: metadata of the pr_debug sites, registered per module (the patch
# module registers its own); compared as part of the code using them, their line number left out
DDEBUG_SECTION = "__dyndbg"
# struct _ddebug on 6.1 x86-64: modname, function, filename, format, then lineno:18 in the u32 at 32
DDEBUG_SIZE, DDEBUG_LINE, DDEBUG_LINE_MASK = 56, 32, (1 << 18) - 1
# compiler-made constants holding a function's own name: they follow the code, not the fix
_NAME_CONSTANTS = ("__func__", "__FUNCTION__", "__PRETTY_FUNCTION__")
_DATA_PREFIXES = (".data", ".bss", ".rodata")
# function-local state whose fresh copy in the patch module is harmless whatever its initialiser:
# print-once flags, printk_ratelimited's state, lock class keys (mutex_init and friends)
HARMLESS_STATE = ("__already_done", "__print_once", "__warned", "_rs", "__key")
# functions called with __LINE__ as an argument (printk(... __FILE__, __LINE__), might_sleep() and
# friends): a `mov $line, %reg` feeding one of them may move with the lines (kpatch's list, facts only)
LINE_USERS = frozenset(
    {"_printk", "printk", "__warn_printk", "__might_sleep", "__might_resched", "__might_fault"}
    | {"lockdep_rcu_suspicious"}
)
_MOV_IMM = re.compile(r"^(\w+), (0x[0-9a-f]+|\d+)$")  # capstone's Intel syntax: mov edx, 0x3c2
# code outside functions is read up to its first unconditional transfer, at most this many bytes
_SNIPPET_MAX, _SNIPPET_END = 64, frozenset({"jmp", "ret", "ud2", "int3"})


@dataclass(frozen=True)
class FunctionChange:
    """One function (or IPA clone / cold part) and how the fix changed it."""

    name: str  # patched name; the original name when removed
    status: str
    original: str = ""  # the original's name when it differs (a renumbered clone), else ""
    section: str = ""
    size: int = 0
    binding: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "original": self.original,
            "section": self.section,
            "size": self.size,
            "binding": self.binding,
        }


@dataclass(frozen=True)
class DataChange:
    """A global or static variable the fix added, removed or re-initialised."""

    name: str
    status: str
    section: str = ""
    size: int = 0
    binding: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "section": self.section,
            "size": self.size,
            "binding": self.binding,
        }


@dataclass(frozen=True)
class Changes:
    """Everything a fix changed in one translation unit."""

    tu: str
    functions: tuple[FunctionChange, ...]
    data: tuple[DataChange, ...]

    def named(self, *statuses: str) -> list[str]:
        return [f.name for f in self.functions if f.status in statuses]

    @property
    def changed(self) -> list[str]:
        return self.named(CHANGED)

    @property
    def new(self) -> list[str]:
        return self.named(NEW)

    @property
    def removed(self) -> list[str]:
        return self.named(REMOVED)

    @property
    def data_changed(self) -> bool:
        return any(d.status != UNCHANGED for d in self.data)

    def to_dict(self) -> dict:
        return {
            "tu": self.tu,
            "functions": [f.to_dict() for f in self.functions],
            "data": [d.to_dict() for d in self.data],
        }


def refused_data(ch: Changes) -> list[DataChange]:
    """The data changes a live patch cannot carry out: a changed initial value or size of a variable
    the running kernel has (its copy is in memory and is never re-initialised; read-only data too:
    the new code would read the old table), and a removed global (other objects may still use the
    running kernel's copy while the new code no longer does). A new variable is the patch module's
    own and starts fresh; a removed static was used only by the code the patch replaces."""
    out = []
    for d in ch.data:
        harmless = base_name(d.name, True) in HARMLESS_STATE
        if d.status == CHANGED and not harmless or d.status == REMOVED and d.binding != "local":
            out.append(d)
    # a static gone and a new one come: most likely renamed or moved, and a fresh copy would lose
    # the running kernel's state
    state = [d for d in ch.data if _writable(d) and base_name(d.name, True) not in HARMLESS_STATE]
    gone = [d for d in state if d.status == REMOVED and d.binding == "local"]
    new = [d for d in state if d.status == NEW]
    return out + (gone + new if gone and new else [])


def _writable(d: DataChange) -> bool:
    return d.section.startswith((".data", ".bss")) and not d.section.startswith(".data..ro_after_init")


def local_statics(obj: ObjectFile, function: str, name: str) -> list[str]:
    """The function-local statics `name.N` the code of `function` (and its .cold part) references in
    an object: the symbols a patch binds to, as kpatch correlates them. gas refers to a local
    through its section symbol; with -fdata-sections that section holds the static alone."""
    index, found = obj.index, []
    for f in obj.functions():
        if f.name != function and base_name(f.name) != f"{function}.cold":
            continue
        for r in obj.relocs_in(f):
            t = obj.symbol(r.sym)
            if t.type == STT_SECTION:
                held = [s for s in index.symbols if s.shndx == t.shndx and s.type == STT_OBJECT]
                t = held[0] if len(held) == 1 else t
            if (
                t.type == STT_OBJECT
                and t.bind == STB_LOCAL
                and t.defined
                and _LOCAL_NUMBER.search(t.name)
                and base_name(t.name, True) == name
                and t.name not in found
            ):
                found.append(t.name)
    return found


def base_name(name: str, local_object: bool = False) -> str:
    """A name without the numbers gcc gives clones (and function-scope statics): foo.isra.0 -> foo.isra,
    and without __UNIQUE_ID's counter: __UNIQUE_ID_ddebug412 -> __UNIQUE_ID_ddebug."""
    name = _UNIQUE_ID.sub(r"\1", _CLONE.sub(r".\1", name))
    return _LOCAL_NUMBER.sub("", name) if local_object else name


LineMap = Callable[[int], int | None]


def line_map(hunks: Iterable) -> LineMap:
    """Old line -> new line of the file a diff's hunks patch (None: a line the diff removed)."""
    moved: dict[int, int | None] = {}
    shifts: list[tuple[int, int]] = []  # (first old line after a hunk, new - old from there on)
    for h in hunks:
        o, n = max(h.old_start, 1), max(h.new_start, 1)
        for line in h.lines:
            if line.startswith("+"):
                n += 1
                continue
            moved[o] = n if line.startswith(" ") else None
            o += 1
            n += 0 if line.startswith("-") else 1
        shifts.append((o, n - o))

    def new_line(old: int) -> int | None:
        if old in moved:
            return moved[old]
        return old + next((d for start, d in reversed(shifts) if old >= start), 0)

    return new_line


def compare(original: str | Path, patched: str | Path, tu: str = "", lines: LineMap | None = None) -> Changes:
    """Compare two builds of one TU (built with -ffunction-sections -fdata-sections). With `lines`
    (the diff's line map), a function whose only difference is a __LINE__ argument that moved
    with the lines is unchanged."""
    a, b = _Side(original), _Side(patched)
    a.shared = b.shared = a.shared | b.shared  # ambiguous on either side: compare callee bytes
    funcs = _pair_all(a.functions(), b.functions())
    if lines is not None:
        funcs = [
            (o, n, UNCHANGED if s == CHANGED and o and n and _line_only(a, b, o, n, lines) else s) for o, n, s in funcs
        ]
    data = _pair_all(a.variables(), b.variables())
    return Changes(
        tu or str(patched), tuple(_function_change(*p) for p in funcs), tuple(_data_change(*p) for p in data)
    )


class _Item:
    """A symbol with its comparison key (base name) and content fingerprint."""

    def __init__(self, sym: Symbol, key: str, fingerprint: tuple, section: str):
        self.sym, self.key, self.fp, self.section = sym, key, fingerprint, section


# (old, new, status): None on the side that lacks the item (new or removed), never on both
_Pair = tuple[_Item | None, _Item | None, str]


def _pair_all(olds: list[_Item], news: list[_Item]) -> list[_Pair]:
    """(old, new, status) for every item; same key groups are paired by content, then by name."""
    keys = list(dict.fromkeys([i.key for i in news] + [i.key for i in olds]))
    out: list[_Pair] = []
    for key in keys:
        out += _pair_group([i for i in olds if i.key == key], [i for i in news if i.key == key])
    return out


def _pair_group(olds: list[_Item], news: list[_Item]) -> list[_Pair]:
    out: list[_Pair] = []
    olds, news = list(olds), list(news)
    for match, status in (
        (lambda o, n: o.fp == n.fp, UNCHANGED),
        (lambda o, n: o.sym.name == n.sym.name, CHANGED),
        (lambda o, n: True, CHANGED),
    ):
        for o in list(olds):
            n = next((n for n in news if match(o, n)), None)
            if n is not None:
                out.append((o, n, status))
                olds.remove(o)
                news.remove(n)
    out += [(None, n, NEW) for n in news] + [(o, None, REMOVED) for o in olds]
    return out


_ARG_REGISTERS = {"edi", "esi", "edx", "ecx", "r8d", "r9d", "rdi", "rsi", "rdx", "rcx", "r8", "r9"}


def _without_line(descriptor: bytes) -> bytes:
    """A dynamic-debug descriptor without its line number (a blank line above moves it)."""
    word = int.from_bytes(descriptor[DDEBUG_LINE : DDEBUG_LINE + 4], "little") & ~DDEBUG_LINE_MASK
    return descriptor[:DDEBUG_LINE] + word.to_bytes(4, "little") + descriptor[DDEBUG_LINE + 4 :]


def _line_only(a: _Side, b: _Side, old: _Item, new: _Item, lines: LineMap) -> bool:
    """The two builds differ only in `mov $line, %reg` instructions feeding a LINE_USERS call,
    each old immediate a line the diff moved to exactly the new one (an unchanged text line)."""
    if old.fp[1:] != new.fp[1:] or old.sym.size != new.sym.size:
        return False  # relocations, special entries or size differ: more than a line number
    x, y = decode(bytes(a.index.code(old.sym))), decode(bytes(b.index.code(new.sym)))
    if len(x) != len(y):
        return False
    calls = _call_targets(a, old.sym)
    moved = False
    for i, (p, q) in enumerate(zip(x, y, strict=True)):
        if p.raw == q.raw:
            continue
        m, k = _MOV_IMM.match(p.operands), _MOV_IMM.match(q.operands)
        if not (m and k and p.mnemonic == q.mnemonic == "mov" and p.size == q.size and m[1] == k[1]):
            return False
        before, after = int(m[2], 0), int(k[2], 0)
        if before == after or lines(before) != after:
            return False
        # an argument of the next instruction that transfers control, which is a LINE_USERS call:
        # the value cannot reach a compare or a store first
        after_mov = next((c for c in x[i + 1 :] if c.mnemonic.startswith(("call", "j", "ret"))), None)
        if m[1] not in _ARG_REGISTERS or after_mov is None or after_mov.mnemonic != "call":
            return False
        if calls.get(after_mov.offset + 1) not in LINE_USERS:
            return False
        moved = True
    return moved


def _call_targets(side: _Side, sym: Symbol) -> dict[int, str]:
    """Offset in the function of a relocated field -> the name of the symbol it names."""
    return {r.offset - sym.value: side.obj.symbol(r.sym).name for r in side.obj.relocs_in(sym)}


def _digest(data) -> bytes:
    return hashlib.sha256(bytes(data)).digest()


def _either(old: _Item | None, new: _Item | None) -> _Item:
    """The item a pair reports: the patched one, else the original."""
    if new is not None:
        return new
    if old is None:
        raise ValueError("a change pair without either item")
    return old


def _function_change(old: _Item | None, new: _Item | None, status: str) -> FunctionChange:
    item = _either(old, new)
    original = old.sym.name if old and new and old.sym.name != new.sym.name else ""
    return FunctionChange(item.sym.name, status, original, item.section, item.sym.size, item.sym.binding)


def _data_change(old: _Item | None, new: _Item | None, status: str) -> DataChange:
    item = _either(old, new)
    return DataChange(item.sym.name, status, item.section, item.sym.size, item.sym.binding)


class _Side:
    """One object file, with the look-ups a fingerprint needs."""

    def __init__(self, path: str | Path):
        self.obj = ObjectFile(path)
        self.index = self.obj.index
        self.sections = self.index.elf.sections
        self.shared = self._shared_names()
        self.incoming = self._incoming()
        self._shallow: dict[int, tuple] = {}
        self._snippets: set[tuple[int, int]] = set()

    @cached_property
    def bugs(self) -> list[tuple]:
        return self._bug_entries()

    def functions(self) -> list[_Item]:
        return [_Item(s, base_name(s.name), self._function_fp(s), s.section) for s in self.obj.functions()]

    def variables(self) -> list[_Item]:
        return [
            _Item(s, base_name(s.name, s.bind == STB_LOCAL), self._data_fp(s), s.section)
            for s in self.index.symbols
            if self._is_variable(s)
        ]

    def _shared_names(self) -> set[str]:
        """Base names held by several functions (foo.constprop.0 and .1): names alone are ambiguous."""
        seen: dict[str, int] = {}
        for s in self.obj.functions():
            seen[base_name(s.name)] = seen.get(base_name(s.name), 0) + 1
        return {name for name, n in seen.items() if n > 1}

    def _callee(self, name: str, sym: Symbol | None) -> tuple:
        """A reference to a function; when its base name is shared, the callee's own bytes say
        which specialisation it is (a caller switching clones must not look unchanged)."""
        base = base_name(name)
        if base not in self.shared or sym is None or not sym.defined:
            return (base,)
        if sym.symidx not in self._shallow:
            relocs = self.obj.relocs_in(sym)
            code = bytes(self.index.code(sym))
            self._shallow[sym.symidx] = (
                _digest(masked_pair(code, code, relocs, sym.value)[0]),
                tuple((r.offset - sym.value, r.type) for r in relocs),
            )
        return (base, *self._shallow[sym.symidx])

    def _is_variable(self, s: Symbol) -> bool:
        sec = self.index.section_of(s)
        if s.type != STT_OBJECT or sec is None or not sec.name.startswith(_DATA_PREFIXES):
            return False
        if sec.flags & SHF_MERGE and sec.flags & SHF_STRINGS:
            return False  # string literals: their users' code compares them by content
        return base_name(s.name, True) not in _NAME_CONSTANTS

    # -- fingerprints ---------------------------------------------------------------------------

    def _function_fp(self, sym: Symbol) -> tuple:
        code = bytes(self.index.code(sym))
        relocs = self.obj.relocs_in(sym)
        masked = bytes(masked_pair(code, code, relocs, sym.value)[0])
        insns = decode(code) if any(r.type in PC_RELATIVE for r in relocs) else []
        targets = tuple((r.offset - sym.value, r.type, self._target(r, insns, r.offset - sym.value)) for r in relocs)
        return masked, targets, self._refs_into(sym), self._bugs_in(sym), self._specials_in(sym)

    def _data_fp(self, sym: Symbol) -> tuple:
        sec = self.index.section_of(sym)
        if sec is None:
            raise self.index.elf.error(f"variable {sym.name} has no section")
        raw = bytes(sym.size) if sec.type == SHT_NOBITS else bytes(self.index.code(sym))
        relocs = self.obj.relocs_in(sym)
        masked = bytes(masked_pair(raw, raw, relocs, sym.value)[0])
        if sec.name == DDEBUG_SECTION and sym.size == DDEBUG_SIZE:
            masked = _without_line(masked)
        targets = tuple((r.offset - sym.value, r.type, self._target(r, [], 0)) for r in relocs)
        return masked, targets, sym.size, bool(sec.flags & SHF_WRITE)

    def _target(self, r: Reloc, insns: list, off: int) -> tuple:
        """A build-independent name for what a relocation points at."""
        t = self.obj.symbol(r.sym)
        sec = self.index.section_of(t)
        # gas keeps literal labels (.LC6) in mergeable sections (strings, .rodata.cst*); a fix
        # that adds a literal renumbers them, so such a label stands for what it points at
        merged = sec is not None and bool(sec.flags & SHF_MERGE)
        label = merged and t.bind == STB_LOCAL and not t.is_func and t.name.startswith(".L")
        if t.type != STT_SECTION and not label:
            return ("sym", self._callee(t.name, t if t.is_func else None), r.addend)
        if sec is None:
            return ("section", t.shndx)
        # a PC-relative addend is relative to the end of the instruction, not of the field
        k = 0
        if r.type in PC_RELATIVE and insns:
            insn = insn_at(insns, off)
            k = insn.offset + insn.size - off if insn else 4
        where = t.value + r.addend + k
        if sec.flags & SHF_MERGE and sec.flags & SHF_STRINGS:
            return ("string", self._string(sec, where))
        if label:  # a merged constant: its bytes
            return ("constant", bytes(self.index.elf.section_data(sec))[where : where + max(sec.entsize, 1)])
        return self._holder(t.shndx, sec, where)

    def _holder(self, shndx: int, sec, where: int) -> tuple:
        holder = self.index.containing(shndx, where)
        if holder is None and sec.is_exec and (shndx, where) not in self._snippets:
            return self._snippet(shndx, sec, where)
        if holder is None:
            # anonymous data (jump tables, constant pools): its bytes stand for it
            return ("anon", base_name(sec.name), where, _digest(self.index.elf.section_data(sec)))
        if holder.is_func:
            return ("sym", self._callee(holder.name, holder), where - holder.value)
        if sec.name == DDEBUG_SECTION and holder.type == STT_OBJECT:
            # its place moves with every pr_debug added before it: the descriptor by content
            return ("ddebug", where - holder.value, self._data_fp(holder))
        name = base_name(holder.name, holder.bind == STB_LOCAL and holder.type == STT_OBJECT)
        if holder.type == STT_OBJECT and not sec.flags & SHF_WRITE and holder.bind == STB_LOCAL:
            # local constants (__func__ and friends) are not reported as data: compare content
            return ("const", name, where - holder.value, _digest(self.index.code(holder)))
        return ("sym", name, where - holder.value)

    def _snippet(self, shndx: int, sec, where: int) -> tuple:
        """Code outside any function (static_cpu_has's bit test in .altinstr_aux) by content: up to
        its first unconditional jump or return. Its offset moves whenever the TU gains or loses
        such a snippet, so neither the offset nor the section's other bytes may stand for it."""
        data = bytes(self.index.elf.section_data(sec))
        insns = decode(data[where : where + _SNIPPET_MAX])
        end = next((i.offset + i.size for i in insns if i.mnemonic in _SNIPPET_END), None)
        if end is None:
            return ("anon", base_name(sec.name), where, _digest(data))
        self._snippets.add((shndx, where))  # a snippet jumping to itself is compared by offset
        try:
            relocs = [r for r in self.obj.relocs(shndx)[1] if where <= r.offset < where + end]
            code = data[where : where + end]
            masked = bytes(masked_pair(code, code, relocs, where)[0])
            targets = tuple((r.offset - where, r.type, self._target(r, insns, r.offset - where)) for r in relocs)
        finally:
            self._snippets.discard((shndx, where))
        return ("snippet", base_name(sec.name), masked, targets)

    def _string(self, sec, where: int) -> bytes | None:
        data = bytes(self.index.elf.section_data(sec))
        end = data.find(b"\0", where) if 0 <= where < len(data) else -1
        return data[where:end] if end >= 0 else None

    # -- references from other sections ---------------------------------------------------------

    def _incoming(self) -> dict[int, list[tuple]]:
        """Target section -> (from section, type, offset) of allocated data pointing into it.

        Catches entries in special sections (exception table, jump labels, alternatives,
        mcount records) that a fix adds or removes for a function without touching its bytes.
        """
        out: dict[int, list[tuple]] = {}
        for sec in self.sections:
            if sec.type != SHT_RELA or not 0 < sec.info < len(self.sections):
                continue
            src = self.sections[sec.info]
            if not src.flags & SHF_ALLOC or src.is_exec or src.name == BUG_TABLE:
                continue
            for r in relocations(self.index.elf, sec.info):
                t = self.obj.symbol(r.sym)
                if t.defined and t.shndx < len(self.sections):
                    out.setdefault(t.shndx, []).append((base_name(src.name), r.type, t.value + r.addend))
        return out

    def _refs_into(self, sym: Symbol) -> tuple:
        refs = self.incoming.get(sym.shndx, [])
        return tuple(
            sorted(
                (name, typ, where - sym.value)
                for name, typ, where in refs
                if sym.value <= where < sym.value + max(sym.size, 1)
            )
        )

    # -- special-section payloads --------------------------------------------------------------

    @cached_property
    def specials(self) -> dict[int, list[tuple[int, str, tuple]]]:
        """Code section -> (offset, table, normalised payload) of each special-section entry about
        code there (elf/special.py: jump labels, alternatives, exception table, static calls,
        paravirt sites). The position alone is in _refs_into; this is the rest of the entry: a
        static branch's key and target, a fixup and its type, a feature bit and the replacement."""
        out: dict[int, list[tuple[int, str, tuple]]] = {}
        alts: list[tuple[TableEntry, TableLayout]] = []
        for layout in LAYOUTS:
            for entry in table_entries(self.index, layout):
                if layout is ALTINSTRUCTIONS and entry.regular:
                    alts.append((entry, layout))  # after the rest: replacements hold entries too
                elif entry.code is not None:
                    out.setdefault(entry.code[0], []).append(
                        (entry.code[1], entry.section, self._payload(entry, layout))
                    )
        for entry, layout in alts:
            if entry.code is not None:
                out.setdefault(entry.code[0], []).append(
                    (entry.code[1], entry.section, self._payload(entry, layout, out))
                )
        return out

    def _payload(self, entry: TableEntry, layout: TableLayout, nested: dict | None = None) -> tuple:
        """An entry without its position: bytes with relocated fields zeroed, each relocated field
        as what it points at (a symbol + addend, a function + offset), an alternative's replacement
        as its code."""
        raw = bytearray(entry.data)
        fields = []
        repl = layout.field("repl")[0] if layout is ALTINSTRUCTIONS and entry.regular else -1
        for r in entry.relocs:
            raw[r.offset : r.offset + r.width] = bytes(r.width)
            if r.offset == 0:
                continue  # the code field: the entry's position, the function's own business
            if r.offset == repl and nested is not None:
                off, _ = layout.field("replacementlen")
                fields.append((r.offset, r.type, self._replacement(r, entry.data[off], nested)))
            else:
                fields.append((r.offset, r.type, self._target(r, [], 0)))
        return bytes(raw), tuple(fields), entry.regular

    def _replacement(self, r: Reloc, length: int, nested: dict) -> tuple:
        """An alternative's replacement code by content (its place in .altinstr_replacement moves
        whenever another alternative of the TU is added): bytes, relocations, entries about it."""
        where = points_at(self.index, r)
        if where is None:
            return ("replacement", None)
        shndx, start = where
        code = bytes(self.index.elf.section_data(self.sections[shndx]))[start : start + length]
        relocs = [x for x in self.obj.relocs(shndx)[1] if start <= x.offset < start + length]
        masked = bytes(masked_pair(code, code, relocs, start)[0])
        insns = decode(code) if any(x.type in PC_RELATIVE for x in relocs) else []
        targets = tuple((x.offset - start, x.type, self._target(x, insns, x.offset - start)) for x in relocs)
        inner = tuple(
            sorted(
                ((w - start, sec, payload) for w, sec, payload in nested.get(shndx, []) if start <= w < start + length),
                key=repr,
            )
        )
        return ("replacement", masked, targets, inner)

    def _specials_in(self, sym: Symbol) -> tuple:
        return tuple(
            sorted(
                (
                    (where - sym.value, sec, payload)
                    for where, sec, payload in self.specials.get(sym.shndx, [])
                    if sym.value <= where < sym.value + max(sym.size, 1)
                ),
                key=repr,
            )
        )

    # -- __bug_table ----------------------------------------------------------------------------

    def _bug_entries(self) -> list[tuple]:
        """(section index, offset, file, flags, raw) per WARN/BUG entry; raw only when not understood.

        The line field is provably just __LINE__ when the table has the kernel's 12-byte layout
        and every entry's first field points at code; then the line is left out of the compare.
        Any other layout keeps the whole entry (line included): a line-only move then shows as
        a change, which is safe. An immediate __LINE__ passed to a function in the code itself
        (warn_slowpath_fmt and friends) cannot be told apart from any other constant without
        data-flow analysis, so it is never ignored.
        """
        sec = self.index.elf.section(BUG_TABLE)
        if sec is None:
            return []
        data = bytes(self.index.elf.section_data(sec))
        relocs = {r.offset: r for r in relocations(self.index.elf, sec.index)}
        if len(data) % BUG_ENTRY:
            return self._raw_bugs(relocs, data)
        codes = []
        for e in range(0, len(data), BUG_ENTRY):
            code = self._bug_code(relocs.get(e))
            if code is None:
                return self._raw_bugs(relocs, data)
            codes.append((e, code))
        return [self._bug(relocs, data, e, code) for e, code in codes]

    def _bug_code(self, r: Reloc | None) -> tuple[int, int] | None:
        if r is None:
            return None
        t = self.obj.symbol(r.sym)
        sec = self.index.section_of(t)
        return (t.shndx, t.value + r.addend) if sec is not None and sec.is_exec else None

    def _bug(self, relocs: dict, data: bytes, e: int, code: tuple[int, int]) -> tuple:
        shndx, where = code
        file_rel = relocs.get(e + 4)
        # `.long file - entry`: the addend carries the field's distance from the entry start
        file = self._target(file_rel._replace(addend=file_rel.addend - 4), [], 0) if file_rel else None
        flags = int.from_bytes(data[e + BUG_FLAGS : e + BUG_FLAGS + 2], "little")
        return shndx, where, file, flags, None

    def _raw_bugs(self, relocs: dict, data: bytes) -> list[tuple]:
        """Unknown layout: an entry runs from one code pointer to the next, all bytes compared."""
        heads = sorted((off, code) for off, r in relocs.items() if (code := self._bug_code(r)) is not None)
        ends = [off for off, _ in heads[1:]] + [len(data)]
        return [(code[0], code[1], None, None, data[off:end]) for (off, code), end in zip(heads, ends, strict=True)]

    def _bugs_in(self, sym: Symbol) -> tuple:
        return tuple(
            sorted(
                (
                    (where - sym.value, file, flags, raw)
                    for shndx, where, file, flags, raw in self.bugs
                    if shndx == sym.shndx and sym.value <= where < sym.value + sym.size
                ),
                key=repr,
            )
        )
