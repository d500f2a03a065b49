"""The callers a changed IPA clone makes a fix replace.

gcc compiles some functions only as IPA clones: `foo.isra.0` (parameters dropped or passed by
value), `foo.constprop.0` (constant arguments folded in), `foo.part.0` (the body split off a header
gcc inlines into the callers). A clone's calling convention is gcc's own, so the module's `foo`,
compiled from source with its C signature, cannot be registered in its place. Its callers can: each
caller's new version calls the module's own `foo`, and under the livepatch consistency model a task
runs either the old callers (which keep calling the old clone) or the new ones.

That holds only while a task inside the old clone has an old caller on its stack, which the
transition's stack check then sees. So every edge into the clone must be a `call` from a function
whose range the check reads: a tail jump (the caller's frame is gone), a call from a `.cold` part
(the check reads the parent's symbol size, which does not cover `foo.cold`), a stored address, or
code outside any function is refused. A caller that is a clone itself stands for its own callers,
recursively. Callers in vmlinux's `__init`/`__exit` code need nothing: that code is freed or was
never linked; a module's `__init` runs again at each load and its `__exit` is notrace: refused.

A clone the patched build no longer has (gcc kept the C ABI there) still runs for the old callers:
the pipeline checks it the same way. The references are read from the original object: with
`-ffunction-sections` each function has its own section and relocations, and verify proves that
object equal to the running binary. The kernel builds with `-fno-jump-tables` (retpolines), so a
function's own data holds no pointers into its code; any data reference is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from kgenv.elf.disasm import Insn, decode, insn_at
from kgenv.elf.reader import SHF_ALLOC, SHT_RELA
from kgenv.elf.relocs import R_X86_64_PC32, R_X86_64_PLT32, Reloc, relocations
from kgenv.elf.special import LAYOUTS, table_entries
from kgenv.elf.symbols import STB_LOCAL, STT_FUNC, STT_SECTION, Symbol
from kgenv.verify.mapping import ObjectFile

# the clones whose calling convention gcc may change (one or several suffixes: count.constprop.0.isra.0)
IPA_CLONE = re.compile(r"\.(isra|constprop|part)\.\d+")
COLD = re.compile(r"\.cold(\.\d+)?$")
# tables that only record a position in code (ftrace, unwinder, objtool's patch lists): no control
# transfer and no stored pointer; the tables of elf/special.py are read entry by entry instead
POSITION_TABLES = frozenset(
    {
        "__mcount_loc",
        "__patchable_function_entries",
        ".orc_unwind_ip",
        ".return_sites",
        ".retpoline_sites",
        ".call_sites",
        ".ibt_endbr_seal",
        ".kcfi_traps",
        ".smp_locks",
        "__bug_table",
    }
)
_DISCARDED = ".discard."  # objtool annotations, dropped at link time
_FREED = (".init.text", ".exit.text")
_CALL, _JUMP = "call", "jump"


def is_clone(name: str) -> bool:
    """Is `name` (a `.cold` part counts as its parent) an IPA clone whose ABI may differ?"""
    return bool(IPA_CLONE.search(COLD.sub("", name)))


@dataclass
class Callers:
    """What the changed clones of one object make the fix replace, or why it cannot."""

    replace: dict[str, list[str]] = field(default_factory=dict)  # caller -> the changed clones it stands for
    freed: dict[str, list[str]] = field(default_factory=dict)  # vmlinux __init/__exit caller -> clones
    refused: dict[str, str] = field(default_factory=dict)  # changed clone -> why (one clause)

    def notes(self) -> list[str]:
        """One line per changed clone for fix.notes: which callers stand for it."""
        by_clone: dict[str, list[str]] = {}
        for caller, clones in self.replace.items():
            for c in clones:
                by_clone.setdefault(c, []).append(caller)
        out = [
            f"{c} changed its calling convention (an IPA clone, or a static whose prototype the fix "
            f"changes): its callers {', '.join(callers)} are replaced and call the patch's own copy; the "
            "old one keeps serving tasks still in the old callers"
            for c, callers in by_clone.items()
        ]
        out += [
            f"{caller} calls {', '.join(clones)} from __init/__exit code, which "
            "the running kernel has freed (or never linked): not replaced"
            for caller, clones in self.freed.items()
        ]
        return out


class _Refused(Exception):
    """A clone whose callers cannot stand in for it: the one-clause reason."""


def callers(obj: ObjectFile, clones: Iterable[str], module: bool) -> Callers:
    """The callers (source names) the changed `clones` of `obj` make the fix replace. `module`:
    the object is a loadable module's, whose __init code runs again at each load."""
    refs = _References(obj)
    out = Callers()
    for clone in clones:
        try:
            replace, freed = _walk(refs, clone, module)
        except _Refused as exc:
            out.refused[clone] = str(exc)
            continue
        for name in replace:
            out.replace.setdefault(name, []).append(clone)
        for name in freed:
            out.freed.setdefault(name, []).append(clone)
    return out


def _walk(refs: _References, clone: str, module: bool) -> tuple[list[str], list[str]]:
    """(callers to replace, freed callers) of one changed clone, through callers that are clones."""
    replace: list[str] = []
    freed: list[str] = []
    todo, seen = [clone], {clone}
    while todo:
        name = todo.pop(0)
        for caller, section in refs.callers(name):
            if section.startswith(_FREED):
                if module:
                    raise _Refused(
                        f"{caller} calls {name} from {section} code, which the module runs with the old one "
                        "(__init at each load, __exit is notrace)"
                    )
                if caller not in freed:
                    freed.append(caller)
            elif is_clone(caller):
                if caller not in seen:
                    seen.add(caller)
                    todo.append(caller)
            elif caller not in replace:
                replace.append(caller)
    return replace, freed


class _References:
    """Who reaches which function of one object: relocations from allocated sections, by target section."""

    def __init__(self, obj: ObjectFile):
        self.obj = obj
        self.index = obj.index
        self.sections = obj.index.elf.sections
        self._code: dict[int, list[Insn]] = {}

    @cached_property
    def into(self) -> dict[int, list[tuple[int, Reloc]]]:
        """target section -> (source section, relocation) of every reference from allocated sections."""
        out: dict[int, list[tuple[int, Reloc]]] = {}
        for sec in self.sections:
            if sec.type != SHT_RELA or not 0 < sec.info < len(self.sections):
                continue
            if not self.sections[sec.info].flags & SHF_ALLOC:
                continue  # debug info: not part of the running kernel
            for r in relocations(self.index.elf, sec.info):
                t = self.obj.symbol(r.sym)
                if t.defined and 0 < t.shndx < len(self.sections):
                    out.setdefault(t.shndx, []).append((sec.info, r))
        return out

    @cached_property
    def entry_code(self) -> dict[tuple[int, int], tuple[int, int] | None]:
        """(table section, relocation offset) -> where the entry's own code is, for elf/special's tables."""
        out: dict[tuple[int, int], tuple[int, int] | None] = {}
        names = {layout.section: layout for layout in LAYOUTS}
        for sec in self.sections:
            if sec.name in names:
                for e in table_entries(self.index, names[sec.name]):
                    for r in e.relocs:
                        out[sec.index, e.offset + r.offset] = e.code
        return out

    def function(self, name: str) -> Symbol:
        found = [s for s in self.index.lookup(name) if s.type == STT_FUNC and s.defined and s.size]
        if len(found) != 1:
            raise _Refused(f"{name} is {'not' if not found else 'not uniquely'} defined in the object")
        sym = found[0]
        if sym.bind != STB_LOCAL:
            raise _Refused(f"{name} is a global symbol: code outside the object may call it")
        return sym

    def callers(self, name: str) -> list[tuple[str, str]]:
        """(caller, caller's section) for every call into `name`; _Refused for any other reference."""
        sym = self.function(name)
        found: list[tuple[str, str]] = []
        sites = 0
        for src, r in self.into.get(sym.shndx, []):
            if not self._reaches(r, sym):
                continue
            caller = self._site(src, r, sym)
            if caller is None:
                continue  # a position record or the clone's own code
            sites += 1
            if caller not in found:
                found.append(caller)
        if not sites:
            raise _Refused(f"no function of the object calls {name}")
        return found

    def _reaches(self, r: Reloc, sym: Symbol) -> bool:
        """Does the relocation point into `sym` (a symbol + addend, or its section + offset)?"""
        t = self.obj.symbol(r.sym)
        if t.type != STT_SECTION:
            return t.symidx == sym.symidx or (t.value == sym.value and t.is_func)
        # a call's field ends the instruction: S + A + 4 is the target; a stored address is S + A
        where = t.value + r.addend + (4 if r.type in (R_X86_64_PC32, R_X86_64_PLT32) else 0)
        holder = self.index.containing(sym.shndx, where)
        if holder is not None and holder.is_func:
            return holder.value == sym.value
        return sym.value <= t.value + r.addend <= sym.value + sym.size  # no function there: count it

    def _site(self, src: int, r: Reloc, sym: Symbol) -> tuple[str, str] | None:
        """The calling function of one reference, None when the reference is no call (a position
        record, the clone's own code); _Refused when it is a transfer the stack check cannot see."""
        sec = self.sections[src]
        if not sec.is_exec:
            self._check_data(src, r, sym)
            return None
        f = self.index.containing(src, r.offset)
        if f is None or not f.is_func:
            raise _Refused(f"code outside any function ({sec.name}) reaches {sym.name}")
        kind = self._kind(f, r.offset - f.value)
        if COLD.sub("", f.name) == sym.name and kind:
            return None  # the clone's own body or .cold part jumping or recursing into it
        if kind not in (_CALL, _JUMP):
            raise _Refused(f"{f.name} takes the address of {sym.name}")
        if COLD.search(f.name):
            raise _Refused(
                f"{f.name} calls {sym.name}: the livepatch stack check reads {COLD.sub('', f.name)}'s size, "
                "which does not cover its .cold part"
            )
        if kind == _JUMP:
            raise _Refused(f"{f.name} tail-jumps to {sym.name}: no caller is on the stack while the old one runs")
        return f.name, sec.name

    def _check_data(self, src: int, r: Reloc, sym: Symbol) -> None:
        """A reference from data is fine only as a position record or an entry about the clone's own code."""
        sec = self.sections[src]
        if sec.name in POSITION_TABLES or sec.name.startswith(_DISCARDED):
            return
        code = self.entry_code.get((src, r.offset))
        if code is not None and code[0] == sym.shndx:
            return  # a table entry about the clone's own code (a branch target, a fixup)
        raise _Refused(f"its address is stored in {sec.name} (data), not only called")

    def _kind(self, f: Symbol, off: int) -> str:
        """Is the instruction holding the relocation at `off` a call, a jump or something else?"""
        if f.symidx not in self._code:
            self._code[f.symidx] = decode(bytes(self.index.code(f)))
        insn = insn_at(self._code[f.symidx], off)
        if insn is None:
            return ""
        if insn.mnemonic == "call":
            return _CALL
        return _JUMP if insn.mnemonic.startswith("j") else ""
