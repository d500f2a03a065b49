"""The reviewable livepatch source of one patched file, kGraft-style, from cfacts' declaration facts.

Everything that is not a code or data definition stays as written. The replaced functions (and
the helpers they need that the running kernel has no out-of-line copy of) stay verbatim; every
other definition is dropped, or turned into a declaration when kept code uses it, so the
reference resolves to the running kernel's object — never a second copy of kernel state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

# the kernel's "print/warn once" flags: a fresh copy only means a message may repeat once
ONCE_FLAGS = ("__already_done", "__print_once", "__warned")
# function-local statics whose fresh copy changes nothing that matters, by type
HARMLESS_TYPES = {
    "struct lock_class_key": "a lockdep class key (a new lock class for lockdep)",
    "struct ratelimit_state": "a fresh ratelimit state (one more burst may be printed)",
}
# dynamic-debug descriptors: per-module metadata the module loader registers for the patch module
DDEBUG_SECTION = "__dyndbg"
# never loaded (__ADDRESSABLE() in static_call and friends keeps a symbol referenced at build time)
DISCARDED_PREFIX = ".discard"
# sections that are gone (or never loaded) by the time a livepatch arrives
FREED_SECTIONS = (".init.", ".exit.", ".meminit.", ".memexit.")
NOINSTR_SECTION = ".noinstr.text"
# makes the trace headers included after it define the tracepoints: the running kernel's must be used
CREATE_TRACE_POINTS = "CREATE_TRACE_POINTS"
ALIAS_PREFIX = "livepatch_"
# a replaced function whose address the kept code takes is defined under this name; its own name
# then means the running kernel's function (kpatch likewise binds such pointers to the original)
NEW_PREFIX = "kgenv_new_"
# sections a new variable may have and still be the patch module's plain data
NEW_STATE_SECTIONS = frozenset({None, ".data..read_mostly"})
# SYSCALL_DEFINEn also defines the syscall's ftrace metadata; the running kernel's stays in charge,
# so the patch empties SYSCALL_METADATA (what CONFIG_FTRACE_SYSCALLS=n does) before the kept syscall
SYSCALL_MACROS = ("SYSCALL_DEFINE",)
SYSCALL_METADATA = (
    "types_",
    "args_",
    "__syscall_meta_",
    "event_enter_",
    "__event_enter_",
    "event_exit_",
    "__event_exit_",
    "__p_syscall_meta_",
)
NO_SYSCALL_METADATA = "#undef SYSCALL_METADATA\n#define SYSCALL_METADATA(sname, nb, ...)\n"
THIS_MODULE_SYMBOL = "__this_module"
# refusal classes: every refusal line starts with one (docs/build.md, "What kgenv refuses and why")
NO_DEFINITION = "no-definition"
NEW_STATE = "new-state"
STATE_COPY = "copy-of-kernel-state"
NOTRACE = "not-traceable"  # the verify verdict of the same fact
FREED_CODE = "init-code"
MISSING_SYMBOL = "not-in-running-binary"
NO_EXTERN = "no-extern-declaration"
POINTER_INTO_PATCH = "pointer-into-patch"
UNPARSABLE = "unparsable-source"
ALIAS_SPLIT = "alias-without-target"


@dataclass(frozen=True)
class Context:
    """What the original TU was compiled as. The generated file is compiled into the patch module,
    but its code runs as part of `objname` (vmlinux or a module): THIS_MODULE, KBUILD_MODNAME and
    the file's statics must mean that object's, not the patch module's."""

    objname: str
    is_module: bool
    modname: str | None  # the original compile's KBUILD_MODNAME value (a C string literal)
    label_prefix: str  # unique per TU: the assembler names of its statics and THIS_MODULE
    # (function, static) -> the symbol (name.N) of that function's local static the original
    # object's code of the function references, or None: the running kernel's copy to bind to
    local_static: Callable[[str, str], str | None] | None = None

    def label(self, name: str) -> str:
        return f"{self.label_prefix}{name}"


@dataclass(frozen=True)
class Extern:
    """A definition of the file the module must take from the running kernel."""

    name: str
    kind: str  # function | variable
    static: bool  # a local symbol there: only a klp relocation can reach it


@dataclass
class Generated:
    text: str
    replaced: list[str] = field(default_factory=list)  # keep ∩ running kernel, in file order
    copied: list[str] = field(default_factory=list)  # kept as code: new, or inlined everywhere
    externs: list[Extern] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # replaced function -> global alias
    labels: dict[str, str] = field(default_factory=dict)  # assembler name -> the running object's symbol
    pinned_by: list[str] = field(default_factory=list)  # new functions and variables a pointer may lead to: pin
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict | None = None  # cfacts' JSON, for --keep-tmp

    def to_dict(self) -> dict:
        return {
            "replaced": self.replaced,
            "copied": self.copied,
            "externs": [f"{e.kind} {e.name}{' (static)' if e.static else ''}" for e in self.externs],
            "aliases": self.aliases,
            "labels": self.labels,
            "pinned_by": self.pinned_by,
            "refusals": self.refusals,
            "notes": self.notes,
        }


@dataclass
class _Group:
    """Declarations whose text overlaps (one macro invocation, `int a, b;`, `struct s {..} v;`)."""

    start: int
    end: int
    members: list = field(default_factory=list)
    role: str = ""  # "" | replaced | copied
    scanned: bool = False
    syscall: bool = False

    @property
    def is_definition(self) -> bool:
        return any(d["is_definition"] and d["kind"] in ("function", "variable", "asm") for d in self.members)

    @property
    def macro(self) -> str | None:
        return next((d["macro"] for d in self.members if d["macro"]), None)

    def defs(self, kind: str) -> list:
        return [d for d in self.members if d["kind"] == kind and d["is_definition"]]


def _groups(decls: list) -> list[_Group]:
    out: list[_Group] = []
    for d in sorted(decls, key=lambda d: (d["start"], -d["end"])):
        g = out[-1] if out else None
        if g and (d["start"] < g.end or d["start"] == g.start or (d["kind"] == "empty" and d["start"] == g.end)):
            g.end = max(g.end, d["end"])
            g.members.append(d)
        else:
            out.append(_Group(d["start"], d["end"], [d]))
    return out


def _freed(section: str | None) -> bool:
    return bool(section and section.startswith(FREED_SECTIONS))


class _Planner:
    """Decides, group by group, what stays, what is dropped and what becomes a declaration."""

    def __init__(self, facts: dict, present: Callable[[str, str], bool], original: dict | None):
        self.file = facts["file"].rsplit("/", 1)[-1]
        self.present = present
        self.groups = _groups(facts["decls"])
        self.fdef: dict[str, tuple[_Group, dict]] = {}
        self.vdef: dict[str, tuple[_Group, dict]] = {}
        for g in self.groups:
            for d in g.defs("function"):
                self.fdef.setdefault(d["name"], (g, d))
            for d in g.defs("variable"):
                self.vdef.setdefault(d["name"], (g, d))
        self.new_vars: set[str] = set()
        if original is not None:
            before = {d["name"] for d in original["decls"] if d["kind"] == "variable" and d["is_definition"]}
            self.new_vars = {
                n
                for n, (_, d) in self.vdef.items()
                if n not in before and not n.startswith("__UNIQUE_ID") and not d["const"]
            }
        # the original file's function-local statics by function (None: not known, all are the kernel's)
        self.old_locals: dict[str, list[str]] | None = None
        if original is not None:
            self.old_locals = {
                d["name"]: [s["name"] for s in d["local_statics"]]
                for d in original["decls"]
                if d["kind"] == "function" and d["is_definition"]
            }
        self.local_static: Callable[[str, str], str | None] | None = None  # Context.local_static
        self.label: Callable[[str], str] = str  # Context.label
        self.bound: list[tuple[dict, str]] = []  # (local static, its assembler name) bound to the kernel's
        self.local_labels: dict[str, str] = {}  # assembler name -> the running object's name.N
        self.externs: dict[str, Extern] = {}
        self.replaced: list[str] = []
        self.copied: list[str] = []
        self.refusals: list[str] = []
        self.notes: list[str] = []
        self.pinned_by: list[str] = []  # new functions and variables whose address may escape into kernel state
        self.rebound: list[str] = []  # replaced functions whose own name means the running one

    def refuse(self, cls: str, why: str) -> None:
        line = f"{cls}: {why}"
        if line not in self.refusals:
            self.refusals.append(line)

    def plan(self, keep: set[str]) -> None:
        self._alias_facts()
        kept = []
        for name in sorted(keep, key=lambda n: self.fdef[n][1]["start"] if n in self.fdef else -1):
            if name not in self.fdef and self.present(name, "function"):
                self.refuse(NO_DEFINITION, f"{name}: no definition of it in {self.file}")
                continue
            if name not in self.fdef:
                # new in the patched object, defined by an included file: a header's inline gcc now
                # emits out of line (a new jhash() call); the generated file's includes bring it back
                self.notes.append(f"{name}: a new out-of-line copy of an inline from a header, compiled in again")
                continue
            g, d = self.fdef[name]
            if self.present(name, "function"):
                self.replaced.append(name)
                self._check_replaceable(d)
            else:
                self.copied.append(name)
                self.notes.append(f"{name}: not in the running kernel, compiled in as a new function")
            g.role = g.role or "replaced"  # all of them first: a kept function is never made extern
            kept.append(g)
        for g in kept:
            self._scan(g)
        self._check_pointers()
        self._check_aliases()

    def _alias_facts(self) -> None:
        """An alias (`__attribute__((alias("T")))`, cfacts counts it a definition) is T's code or
        data under another name: in T's section (freed with __init code), as traceable as T."""
        for table in (self.fdef, self.vdef):
            for _, d in table.values():
                target = table.get(d.get("alias") or "")
                if target:
                    d["section"] = d["section"] or target[1]["section"]
                    d["notrace"] = d["notrace"] or target[1]["notrace"]

    def _check_aliases(self) -> None:
        """A kept alias needs its target defined beside it (gcc: no alias of a declaration). A
        dropped one, like any definition, is a declaration of the running kernel's symbol when kept
        code uses it: there it is T's address (a replaced T's redirect covers it) or, a weak alias
        overridden, the overriding function — what the original's calls reached."""
        for g in self.groups:
            for d in g.members if g.role else ():
                target = d.get("alias") if d["is_definition"] else None
                mate = (self.fdef.get(target or "") or self.vdef.get(target or "") or (None,))[0]
                if target and (mate is None or not mate.role or target in self.rebound):
                    self.refuse(
                        ALIAS_SPLIT,
                        f"{d['name']} is an alias of {target}: the patch must define it, which needs {target} "
                        f"defined beside it, but {target} stays the running kernel's",
                    )

    def _check_pointers(self) -> None:
        """Function pointers the kept code or copied data takes must lead into the running kernel
        wherever it has the function: a pointer stored away outlives a disabled, removed patch, and
        compares unequal to the one the kernel's own code stored (kpatch binds them to the original)."""
        for g in self.groups:
            if g.role not in ("replaced", "copied"):
                continue
            for d in g.members:
                if not d["is_definition"] or d["kind"] not in ("function", "variable"):
                    continue
                # data initialisers only take addresses; code also calls
                taken = d.get("addr_refs", ()) if d["kind"] == "function" else d["refs"]
                for name in taken:
                    if name in self.externs or name not in self.fdef:
                        continue  # the running kernel's (a livepatch relocation), or not a function of the file
                    if name in self.replaced:
                        self._point_at_original(name, d["name"])
                    elif name not in self.copied and self.present(name, "function"):
                        mate = self.fdef[name][0]
                        self.refuse(
                            POINTER_INTO_PATCH,
                            f"{d['name']} takes the address of {name}, which {mate.macro or 'its definition'} "
                            "compiles into the patch module although the running kernel has it",
                        )
                    elif name not in self.pinned_by:
                        self.pinned_by.append(name)
                        self.notes.append(
                            f"{d['name']} takes the address of {name}, new in the patch module: "
                            "the module pins itself once enabled (it can be disabled, never removed)"
                        )

    def _point_at_original(self, name: str, user: str) -> None:
        """The address of a replaced function is the running kernel's: the new definition takes
        another name, and the function's own name becomes a declaration of the running one."""
        d = self.fdef[name][1]
        if d["macro"] or d["extern_decl"] is None:
            self.refuse(
                POINTER_INTO_PATCH,
                f"{user} takes the address of {name}, which this patch replaces and "
                f"{'macro ' + d['macro'] if d['macro'] else 'its type'} keeps from being renamed: the pointer "
                "would be the patch's copy, not the running kernel's function",
            )
        elif name not in self.rebound:
            self.rebound.append(name)
            self.externs[name] = Extern(name, "function", d["storage"] == "static")
            self.notes.append(
                f"{user} takes the address of {name}: it is the running kernel's {name} (the replacement "
                f"is defined as {NEW_PREFIX}{name}; calls reach it through the livepatch redirect)"
            )

    def _check_replaceable(self, d: dict) -> None:
        name, section = d["name"], d["section"]
        if section == NOINSTR_SECTION:
            self.refuse(NOTRACE, f"{name} is noinstr: no ftrace site for the livepatch core to redirect")
        elif d["notrace"]:
            self.refuse(NOTRACE, f"{name} is notrace: no ftrace site for the livepatch core to redirect")
        if _freed(section):
            self.refuse(FREED_CODE, f"{name} is __init/__exit code (section {section}): it has run and been freed")

    def _take(self, g: _Group, role: str) -> None:
        if not g.role:
            g.role = role
            self._scan(g)

    def _scan(self, g: _Group) -> None:
        """Check a kept group and pull in what its functions use."""
        if g.scanned:
            return
        g.scanned = True
        for d in g.defs("function"):
            self.externs.pop(d["name"], None)  # a group mate another function made extern
        state = list(
            dict.fromkeys(
                d["name"] for d in g.defs("variable") if not (d["section"] or "").startswith(DISCARDED_PREFIX)
            )
        )
        funcs = ", ".join(d["name"] for d in g.defs("function"))
        if state and (g.macro or "").startswith(SYSCALL_MACROS) and all(n.startswith(SYSCALL_METADATA) for n in state):
            g.syscall = True
            self.notes.append(f"{funcs}: {g.macro} without its tracing metadata (the running kernel's stays)")
        elif state:
            self.refuse(
                STATE_COPY,
                f"{funcs}: {g.macro or 'its definition'} also defines {', '.join(state)} "
                "(a second copy of kernel state)",
            )
        for d in g.defs("function"):
            self._local_statics(d)
            for ref in d["refs"]:
                self._use(ref, d["name"])

    def _local_statics(self, d: dict) -> None:
        for s in d["local_statics"]:
            where = f"{d['name']}: static {s['name']} (line {s['line']})"
            section = s.get("section") or ""
            if section.startswith(DISCARDED_PREFIX):
                continue
            if s["name"] in ONCE_FLAGS:
                self.notes.append(f"{where} is a fresh once-flag: the message may be printed once more")
            elif s.get("type") in HARMLESS_TYPES:
                self.notes.append(f"{where} is {HARMLESS_TYPES[s['type']]}")
            elif section == DDEBUG_SECTION:
                self.notes.append(f"{where} is a dynamic-debug descriptor, now the patch module's")
            elif s["const"]:
                self.notes.append(f"{where} is read-only data, copied")
            else:
                self._local_state(d, s, where)

    def _local_state(self, d: dict, s: dict, where: str) -> None:
        """A function-local static: new in the fix (the patch module's, fresh), or the running
        kernel's copy, bound by name.N (kpatch correlates them likewise) — never a second copy."""
        name, fn = s["name"], d["name"]
        old = self.old_locals
        if old is not None and name not in old.get(fn, ()):
            if any(name in names for names in old.values()):
                self.refuse(
                    STATE_COPY,
                    f"{where} is new in {fn}, but another function of the original file has a static "
                    f"{name}: if the fix moved it, a fresh copy would not carry its state",
                )
            else:
                self.notes.append(
                    f"{where} is new state, the patch module's own: it starts fresh when the patch "
                    "loads (nothing from before the patch is in it)"
                )
            return
        real = self.local_static(fn, name) if self.local_static else None
        if [x["name"] for x in d["local_statics"]].count(name) > 1:
            problem = f"{fn} declares several statics named {name}"
        elif real is None:
            problem = f"the original object's code of {fn} does not reference a {name}.N to bind to"
        elif not s.get("extern_decl"):
            problem = s.get("extern_problem") or "it cannot be declared extern"
        elif name in self.fdef or name in self.vdef:
            problem = f"a file-scope {name} would capture its extern declaration"
        else:
            label = self.label(f"{fn}.{name}")
            self.bound.append((s, label))
            self.local_labels[label] = real
            self.notes.append(f"{where} is the running kernel's {real}: bound to it, not copied")
            return
        self.refuse(STATE_COPY, f"{where} is function-local state the patch must share, but {problem}")

    def _use(self, name: str, user: str) -> None:
        if name in self.fdef:
            g, d = self.fdef[name]
            if g.role or name in self.externs:
                return
            if _freed(d["section"]):
                self.refuse(FREED_CODE, f"{user} uses {name}, which is __init/__exit code (section {d['section']})")
            elif self.present(name, "function"):
                self._extern(d, "function")
            else:
                self.copied.append(name)
                self._take(g, "copied")
        elif name in self.vdef and name not in self.externs:
            d = self.vdef[name][1]
            if name in self.new_vars:
                self._own_new(self.vdef[name][0], name)
            elif _freed(d["section"]):
                self.refuse(FREED_CODE, f"{user} uses {name}, which is __initdata (section {d['section']})")
            elif self.present(name, "variable"):
                self._extern(d, "variable")
            elif self._read_only(self.vdef[name][0]):
                self._copy_data(self.vdef[name][0], name)
            else:
                self.refuse(
                    MISSING_SYMBOL,
                    f"{user} uses static variable {name}, which the running kernel does not have "
                    "as a symbol (optimised away or new)",
                )

    def _own_new(self, g: _Group, name: str) -> None:
        """A variable the running kernel does not have is the patch module's own, kept as written:
        only the new code sees it, so it starts fresh (kpatch: new variables live in the module)."""
        if g.role:
            return
        g.role = "copied"
        others = [
            m["name"] or m["kind"]
            for m in g.members
            if m["is_definition"]
            and (m["kind"] not in ("variable", "type") or m["kind"] == "variable" and m["name"] not in self.new_vars)
        ]
        special = sorted({m["section"] for m in g.defs("variable")} - NEW_STATE_SECTIONS, key=str)
        kind = "static" if self.vdef[name][1]["storage"] == "static" else "global"
        if others:
            self.refuse(
                NEW_STATE, f"new {kind} variable {name}: {g.macro or 'its definition'} also defines {', '.join(others)}"
            )
        elif special:
            self.refuse(
                NEW_STATE,
                f"new {kind} variable {name} is placed in section {special[0]}, which the loader or the kernel "
                "treats specially (only plain data may be the patch module's own)",
            )
        elif self.vdef[name][1]["const"]:
            self.notes.append(f"{name}: new read-only {kind} variable, the patch module's own")
        else:
            # the new code may hand its address to the kernel (a list node, a lock): the module must
            # outlive every such pointer, so once enabled it is never removed
            self.pinned_by.append(name)
            self.notes.append(
                f"{name}: new {kind} variable, the patch module's own: it starts fresh (its initialiser) when "
                "the patch loads, only the new code sees it, and the module pins itself once enabled"
            )
        for d in g.defs("variable"):
            for ref in d["refs"]:
                self._use(ref, name)

    @staticmethod
    def _read_only(g: _Group) -> bool:
        return not g.macro and all(
            d["kind"] in ("variable", "type") and (d["kind"] == "type" or d["const"]) for d in g.members
        )

    def _copy_data(self, g: _Group, name: str) -> None:
        """Constants the running kernel folded into its code (or new ones): data, not state."""
        if g.role:
            return
        g.role = "copied"
        self.copied.append(name)
        self.notes.append(f"{name}: read-only data the running kernel has no symbol for, copied")
        for d in g.defs("variable"):
            for ref in d["refs"]:
                self._use(ref, name)

    def _extern(self, d: dict, kind: str) -> None:
        if d["extern_decl"] is None:
            self.refuse(NO_EXTERN, f"{d['name']} cannot be declared extern: {d['extern_problem']}")
        self.externs[d["name"]] = Extern(d["name"], kind, d["storage"] == "static")


class _Editor:
    """Byte-range edits of the file text; cuts keep unbalanced #if lines so the nesting survives."""

    def __init__(self, data: bytes, directives: list):
        self.data = data
        self.directives = directives
        self.edits: list[tuple[int, int, bytes]] = []

    def replace(self, start: int, end: int, text: str) -> None:
        start, end, whole = self._lines(start, end)
        new = text.encode() + (b"\n" if whole and text else b"")
        kept = self._kept_directives(start, end)
        if kept:
            new += b"".join(self.data[s:e] for s, e in kept)
        elif whole and not text and self._blank_before(start):
            end = self._eat_blank_line(end)
        self.edits.append((start, end, new))

    def insert(self, offset: int, text: str) -> None:
        """Whole lines before the line holding offset."""
        line = self.data.rfind(b"\n", 0, offset) + 1
        self.edits.append((line, line, text.encode()))

    def remove(self, start: int, end: int) -> None:
        """A word (static/inline) and the blanks after it on its line."""
        while end < len(self.data) and self.data[end : end + 1] in (b" ", b"\t"):
            end += 1
        self.edits.append((start, end, b""))

    def _lines(self, start: int, end: int) -> tuple[int, int, bool]:
        ls = self.data.rfind(b"\n", 0, start) + 1
        le = self.data.find(b"\n", end)
        le = len(self.data) if le < 0 else le
        if self.data[ls:start].strip() or not _blank_or_comment(self.data[end:le]):
            return start, end, False
        return ls, min(le + 1, len(self.data)), True

    def _blank_before(self, start: int) -> bool:
        prev = self.data.rfind(b"\n", 0, max(start - 1, 0)) + 1
        return start == 0 or not self.data[prev:start].strip()

    def _eat_blank_line(self, end: int) -> int:
        le = self.data.find(b"\n", end)
        return le + 1 if le >= 0 and not self.data[end:le].strip() else end

    def _kept_directives(self, start: int, end: int) -> list:
        inside = [(o, w) for o, w in self.directives if start <= o < end]
        depth, balanced = 0, True
        for _, w in inside:
            if w.startswith("if"):
                depth += 1
            elif w == "endif":
                depth -= 1
            elif depth == 0:
                balanced = False  # an #else/#elif of a block opened outside
            if depth < 0:
                balanced = False
        if balanced and depth == 0:
            return []
        return [(o, self._line_end(o)) for o, _ in inside]

    def _line_end(self, offset: int) -> int:
        """End of a directive's line, following backslash continuations."""
        while True:
            nl = self.data.find(b"\n", offset)
            if nl < 0:
                return len(self.data)
            if self.data[nl - 1 : nl] != b"\\":
                return nl + 1
            offset = nl + 1

    def apply(self) -> bytes:
        out, pos = [], 0
        for s, e, new in sorted(self.edits):
            if s < pos:
                raise ValueError(f"overlapping edits at byte {s}")
            out += [self.data[pos:s], new]
            pos = e
        return b"".join(out + [self.data[pos:]])


def _edit(p: _Planner, ed: _Editor) -> None:
    dropped_statics = {
        n for n, (g, d) in p.fdef.items() if not g.role and n not in p.externs and d["storage"] == "static"
    }
    for s, label in p.bound:
        _bind_local(p, ed, s, label)
    first_syscall = next((g for g in p.groups if g.syscall), None)
    if first_syscall:
        ed.insert(first_syscall.start, NO_SYSCALL_METADATA)
    for name in p.rebound:
        d = p.fdef[name][1]
        at = d["name_offset"]
        if ed.data[at : at + len(name)] != name.encode():
            p.refuse(POINTER_INTO_PATCH, f"{name}: its definition's name is not where clang says; cannot rename it")
            continue
        ed.insert(p.fdef[name][0].start, d["extern_decl"])  # the running kernel's, for the uses below
        ed.replace(at, at + len(name), NEW_PREFIX + name)
    for g in p.groups:
        if g.role:
            continue
        if g.is_definition:
            ed.replace(g.start, g.end, _declarations(p, g, ed.data))
            continue
        protos = [d for d in g.members if d["kind"] == "function" and not d["is_definition"]]
        if protos and len(protos) == len(g.members) and all(d["name"] in dropped_statics for d in protos):
            ed.replace(g.start, g.end, "")  # a prototype of a dropped static function
            continue
        for d in protos:
            if d["name"] in p.externs and d["storage"] == "static":
                if d["storage_tokens"]:
                    for s, e in d["storage_tokens"]:
                        ed.remove(s, e)
                elif len(g.members) == 1:
                    ed.replace(g.start, g.end, d["extern_decl"])
                else:
                    p.refuse(
                        NO_EXTERN,
                        f"{d['name']}: its static prototype comes from macro {d['macro']} and cannot be made extern",
                    )


def _bind_local(p: _Planner, ed: _Editor, s: dict, label: str) -> None:
    """`static T name = init;` -> `extern T name __asm__("label");`: the running kernel's copy."""
    start, semi = s["start"], ed.data.find(b";", s["end"])
    between = ed.data[s["end"] : semi]
    shared = any(e_start < semi + 1 and start < e_end for e_start, e_end, _ in ed.edits)  # `static int a, b;`
    if not ed.data.startswith(b"static", start) or semi < 0 or shared or any(c in between for c in b"{}=;,"):
        p.refuse(
            STATE_COPY,
            f"static {s['name']} (line {s['line']}) is not written as a plain declaration: cannot bind it "
            "to the running kernel's copy",
        )
        return
    decl = s["extern_decl"].removesuffix(";")
    ed.edits.append((start, semi + 1, f'{decl} __asm__("{label}"); /* kgenv: the running kernel\'s */'.encode()))


def _declarations(p: _Planner, g: _Group, data: bytes) -> str:
    """What a dropped definition group leaves behind: the type definitions it carried and
    the extern declarations kept code needs."""
    out = []
    for d in g.members:
        if d["kind"] == "type" and d["is_definition"]:
            if g.macro:
                if d["name"]:  # an unnamed one (module_param's, sysfs attributes') nothing else can use
                    p.notes.append(f"type {d['name']} defined by macro {g.macro} is dropped with it")
            elif d["name"]:
                out.append(data[d["start"] : d["end"]].decode(errors="surrogateescape") + ";")
    seen = set()
    for d in g.members:
        if (
            d["kind"] in ("function", "variable")
            and d["name"] in p.externs
            and d["name"] not in seen
            and d["is_definition"]
            and d["extern_decl"]
        ):
            seen.add(d["name"])
            out.append(d["extern_decl"])
    return "\n".join(out)


def _blank_or_comment(tail: bytes) -> bool:
    """The rest of a line holds nothing but a comment (`int x; /* why */`): it goes with the line."""
    tail = tail.strip()
    return not tail or tail.startswith(b"//") or (tail.startswith(b"/*") and tail.find(b"*/") == len(tail) - 2)


def generate(
    text: str | bytes,
    facts: dict,
    keep: set[str],
    present: Callable[[str, str], bool],
    *,
    original: dict | None = None,
    alias_prefix: str = ALIAS_PREFIX,
    context: Context | None = None,
) -> Generated:
    """The livepatch source for `keep` (function names) from the patched file's text and facts.

    present(name, kind) says whether the running kernel has that function/variable out of line;
    `original` is the unpatched file's facts (to refuse new variables); `context` what the TU
    was compiled as (without it the file is taken as written, for tests of the planner alone).
    """
    data = text.encode(errors="surrogateescape") if isinstance(text, str) else text
    if hashlib.sha256(data).hexdigest() != facts["sha256"]:
        raise ValueError(f"{facts['file']}: the facts describe another version of the file")
    p = _Planner(facts, present, original)
    if context:
        p.local_static, p.label = context.local_static, context.label
    diag = facts["diagnostics"]
    if diag["main_file_errors"]:
        p.refuse(
            UNPARSABLE,
            f"clang could not parse {p.file} cleanly ({diag['main_file_errors']} error(s), "
            f"first: {diag['first'][0] if diag['first'] else '?'})",
        )
    elif diag["errors"]:
        p.notes.append(
            f"clang reported {diag['errors']} error(s) in headers (gcc-only code); {p.file} itself parsed cleanly"
        )
    p.plan(keep)
    ed = _Editor(data, facts["directives"])
    _edit(p, ed)
    for m in facts.get("defines", ()):
        if m["name"] == CREATE_TRACE_POINTS:
            ed.replace(m["start"], m["end"], "")
            p.notes.append(f"#define {CREATE_TRACE_POINTS} removed: the tracepoints are the running kernel's")
    labels = _prologue(p, ed, context) if context else {}
    labels.update(p.local_labels)
    body = ed.apply().decode(errors="surrogateescape")
    aliases = {n: alias_prefix + n for n in p.replaced}
    defined = {n: NEW_PREFIX + n if n in p.rebound else n for n in p.replaced}
    if aliases:
        body = (
            body.rstrip("\n")
            + "\n\n/* livepatch: global names of the replaced functions for the registration file */\n"
        )
        body += "".join(
            f'extern typeof({defined[n]}) {a} __attribute__((alias("{defined[n]}"), __copy__({defined[n]})));\n'
            for n, a in aliases.items()
        )
    order = {d["name"]: d["start"] for d in facts["decls"]}
    return Generated(
        text=body,
        replaced=p.replaced,
        copied=p.copied,
        externs=sorted(p.externs.values(), key=lambda e: order.get(e.name, 0)),
        aliases=aliases,
        labels=labels,
        pinned_by=p.pinned_by,
        refusals=p.refusals,
        notes=p.notes,
        facts=facts,
    )


def _prologue(p: _Planner, ed: _Editor, ctx: Context) -> dict[str, str]:
    """Lines at the top of the file that make its names mean the running object's; the labels used.

    The file's statics the kept code reaches get assembler names unique to this TU, so that two
    files' same-named statics, or a static named like some module's export, each bind (as
    livepatch relocations) to this file's copy in the running object.
    """
    lines = [f"/* kgenv: compiled into the patch module, this code runs as part of {ctx.objname} */"]
    if ctx.modname:
        lines += ["#undef KBUILD_MODNAME", f"#define KBUILD_MODNAME {ctx.modname}"]
    else:
        p.notes.append("the original compile had no plain KBUILD_MODNAME: messages carry the patch module's name")
    statics = sorted(e.name for e in p.externs.values() if e.static)
    if ctx.is_module:  # THIS_MODULE is &__this_module: the target module's own, by a livepatch relocation
        statics.append(THIS_MODULE_SYMBOL)
    else:  # built-in code, compiled as it was: no MODULE (THIS_MODULE NULL, the kernel-internal API in view)
        lines.append("#undef MODULE")
    labels = {ctx.label(n): n for n in statics}
    lines += [f"#pragma redefine_extname {n} {label}" for label, n in labels.items()]
    first = ed.data.split(b"\n", 1)[0]
    spdx = b"SPDX-License-Identifier" in first and (first.lstrip().startswith(b"//") or first.rstrip().endswith(b"*/"))
    ed.insert(len(first) + 1 if spdx else 0, "\n".join(lines) + "\n\n")  # the license line stays first
    return labels
