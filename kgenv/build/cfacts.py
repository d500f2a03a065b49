"""Facts about a kernel C file's top-level declarations, read with libclang inside the env image.

Runs as `python3 -m kgenv.build.cfacts` in the env's container with the image's own Python, so
it imports only the standard library, clang.cindex and kgenv's stdlib-only .cmd parser
(kgenv.env.kbuildcmd). The TU is parsed with the include paths and macros of the gcc command
Kbuild recorded in its .cmd file; gensrc.py turns the facts into a livepatch source on the
host. Byte offsets index the file's bytes; `end` is exclusive.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import json
import os
import sys
from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass, field

from kgenv.env.kbuildcmd import read_command
from kgenv.errors import KgenvError

SCHEMA = 1

# gcc options whose argument is the next word when not glued on
_SPLIT = {
    "-I",
    "-isystem",
    "-include",
    "-iquote",
    "-idirafter",
    "-imacros",
    "-D",
    "-U",
    "-o",
    "-MF",
    "-MT",
    "-MQ",
    "-x",
    "-Xassembler",
    "-Xlinker",
    "-Xpreprocessor",
    "-aux-info",
    "--param",
}
# options that change what the preprocessor or the parser sees; everything else gcc-only or codegen
_KEEP_PREFIX = ("-I", "-D", "-U", "-std=", "-isystem", "-iquote", "-idirafter", "-include", "-imacros")
_KEEP_EXACT = {
    "-nostdinc",
    "-m64",
    "-m32",
    "-fshort-wchar",
    "-funsigned-char",
    "-fsigned-char",
    "-fno-PIE",
    "-fno-pie",
    "-fms-extensions",
    "-mno-sse",
    "-mno-mmx",
    "-mno-sse2",
    "-mno-3dnow",
    "-mno-avx",
    "-mno-80387",
}
_CONDITIONALS = {"if", "ifdef", "ifndef", "elif", "elifdef", "elifndef", "else", "endif"}
_STORAGE_WORDS = {"static", "inline", "__inline", "__inline__"}
# clang's printing-policy properties (enum CXPrintingPolicyProperty)
_SUPPRESS_INITIALIZERS, _TERSE_OUTPUT = 6, 17


@dataclass
class Decl:
    name: str
    kind: str  # function | variable | type | asm | empty | other
    cursor: str  # clang cursor kind, for the curious
    storage: str  # static | extern | none
    is_definition: bool
    start: int
    end: int  # whole macro invocation and the trailing ';' included
    name_offset: int
    macro: str | None = None  # top-level macro the declaration comes from
    extern_decl: str | None = None
    extern_problem: str | None = None
    section: str | None = None
    notrace: bool = False
    const: bool = False
    alias: str | None = None  # alias("target"): no body, yet it defines the name at the target's address
    storage_tokens: list = field(default_factory=list)  # [start, end] of literal static/inline words
    refs: list = field(default_factory=list)  # file-scope functions/variables used
    addr_refs: list = field(default_factory=list)  # functions used other than as a direct call's callee
    type_refs: list = field(default_factory=list)
    # {name, type, const, line, section, start, end, extern_decl, extern_problem}
    local_statics: list = field(default_factory=list)


# --- the compile command -------------------------------------------------------------------


def clang_args(argv: list[str]) -> tuple[list[str], str | None]:
    """gcc argv -> (clang parse args, the source file it compiles)."""
    args, source, it = [], None, iter(argv[1:])
    for a in it:
        if a in _SPLIT:
            value = next(it, "")
            if a in _KEEP_PREFIX:
                args += [a, value]
        elif a.startswith(_KEEP_PREFIX) or a in _KEEP_EXACT or (a.startswith("-O") and len(a) <= 3):
            args.append(a)  # -O2 defines __OPTIMIZE__, which compiletime_assert tests
        elif not a.startswith("-") and a.endswith((".c", ".i")):
            source = a
    return args + ["-ferror-limit=0", "-w"], source


# --- libclang helpers ----------------------------------------------------------------------


@functools.cache
def _lib():
    from clang import cindex as ci

    lib = ci.conf.lib
    lib.clang_getCursorPrintingPolicy.restype = ctypes.c_void_p
    lib.clang_getCursorPrintingPolicy.argtypes = [ci.Cursor]
    lib.clang_PrintingPolicy_setProperty.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
    lib.clang_PrintingPolicy_dispose.argtypes = [ctypes.c_void_p]
    lib.clang_getCursorPrettyPrinted.restype = ci._CXString
    lib.clang_getCursorPrettyPrinted.argtypes = [ci.Cursor, ctypes.c_void_p]
    return ci, lib


def pretty(lib, ci, cursor) -> str:
    """clang's own printout of a declaration, without body or initializer (attributes expanded)."""
    policy = lib.clang_getCursorPrintingPolicy(cursor)
    try:
        lib.clang_PrintingPolicy_setProperty(policy, _TERSE_OUTPUT, 1)
        lib.clang_PrintingPolicy_setProperty(policy, _SUPPRESS_INITIALIZERS, 1)
        return ci._CXString.from_result(lib.clang_getCursorPrettyPrinted(cursor, policy))
    finally:
        lib.clang_PrintingPolicy_dispose(policy)


def printed_section(text: str) -> str | None:
    """The last section("...") clang printed among a declaration's attributes."""
    return _printed_string_attribute(text, 'section("')


def printed_alias(text: str) -> str | None:
    """The target of an alias("...") attribute clang printed (`__alias(x)` expands to one)."""
    return _printed_string_attribute(text, 'alias("')


def _printed_string_attribute(text: str, key: str) -> str | None:
    """The (unescaped) string of the last `key` attribute, key ending in `("`."""
    found, pos = None, 0
    while (pos := text.find(key, pos)) >= 0:
        i, out = pos + len(key), []
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text):
                i += 1
            out.append(text[i])
            i += 1
        found, pos = "".join(out), i
    return found


def _kind(t):
    try:
        return t.kind.name
    except ValueError:  # a type kind newer than these bindings: print it as written
        return "UNEXPOSED"


_NEEDS_PARENS = {"CONSTANTARRAY", "INCOMPLETEARRAY", "VARIABLEARRAY", "FUNCTIONPROTO", "FUNCTIONNOPROTO"}


def declarator(t, inner: str) -> str:
    """C declaration of `inner` with type t: inside-out, so arrays and function pointers come out right."""
    k = _kind(t)
    if k == "POINTER":
        quals = " ".join(
            q
            for q, on in (
                ("const", t.is_const_qualified()),
                ("volatile", t.is_volatile_qualified()),
                ("restrict", t.is_restrict_qualified()),
            )
            if on
        )
        s = "*" + (quals + (" " if inner else "") if quals else "") + inner
        pointee = t.get_pointee()
        return declarator(pointee, f"({s})" if _kind(pointee) in _NEEDS_PARENS else s)
    if k == "CONSTANTARRAY":
        return declarator(t.element_type, f"{inner}[{t.element_count}]")
    if k in ("INCOMPLETEARRAY", "VARIABLEARRAY"):
        return declarator(t.element_type, f"{inner}[]")
    if k == "FUNCTIONPROTO":
        params = [declarator(a, "") for a in t.argument_types()]
        if t.is_function_variadic():
            params.append("...")
        return declarator(t.get_result(), f"{inner}({', '.join(params) or 'void'})")
    if k == "FUNCTIONNOPROTO":
        return declarator(t.get_result(), f"{inner}()")
    spelling = t.spelling
    if "(unnamed " in spelling or "(anonymous " in spelling:
        raise _Anonymous(spelling)
    return f"{spelling} {inner}".rstrip() if inner else spelling


class _Anonymous(Exception):
    pass


def extern_decl(cursor, name: str, section: str | None, noreturn: bool = False) -> tuple[str | None, str | None]:
    """`extern <type> name;` for a function or variable, or (None, why not)."""
    try:
        text = "extern " + declarator(cursor.type, name)
    except _Anonymous as e:
        return None, f"its type has no name ({e.args[0].split(' (')[0]} without a tag)"
    if section and cursor.kind.name == "VAR_DECL":
        text += f' __attribute__((section("{section}")))'
    if noreturn:  # callers were compiled knowing it; objtool checks the code after such calls
        text += " __attribute__((__noreturn__))"
    return text + ";", None


def _const(t) -> bool:
    while _kind(t) in ("CONSTANTARRAY", "INCOMPLETEARRAY", "VARIABLEARRAY"):
        t = t.element_type
    return t.is_const_qualified()


# --- tokens of the main file --------------------------------------------------------------


class Tokens:
    """The main file's tokens but comments (raw-lexed: inactive #if branches and directives too)."""

    def __init__(self, tu, path: str, data: bytes):
        toks = [
            t for t in tu.get_tokens(extent=tu.get_extent(path, (0, len(data)))) if t.kind.name != "COMMENT"
        ]  # comments stay where they are, with no owner
        self.data = data
        self.start = [t.location.offset for t in toks]
        self.text = [t.spelling for t in toks]
        self.end = [s + len(w.encode()) for s, w in zip(self.start, self.text, strict=True)]
        self.in_directive = self._directive_tokens()

    def _directive_tokens(self) -> list[bool]:
        """Which tokens belong to a preprocessor directive line (continuations included)."""
        marks, stop = [False] * len(self.text), -1
        for i, word in enumerate(self.text):
            if word == "#" and self.start[i] >= stop and self._line_start(i):
                stop = self._logical_line_end(self.start[i])
            marks[i] = self.start[i] < stop
        return marks

    def _logical_line_end(self, offset: int) -> int:
        while True:
            nl = self.data.find(b"\n", offset)
            if nl < 0:
                return len(self.data)
            if self.data[nl - 1 : nl] != b"\\":
                return nl
            offset = nl + 1

    def _line_start(self, i: int) -> bool:
        """Only blanks between the token and the start of its line."""
        return not self.data[self.data.rfind(b"\n", 0, self.start[i]) + 1 : self.start[i]].strip()

    def next_at(self, offset: int) -> int:
        return bisect_left(self.start, offset)

    def directives(self) -> list:
        """[offset, word] of every conditional directive (#if .. #endif)."""
        out = []
        for i, word in enumerate(self.text):
            if word == "#" and i + 1 < len(self.text) and self.text[i + 1] in _CONDITIONALS and self._line_start(i):
                out.append([self.start[i], self.text[i + 1]])
        return out

    def directive_start(self, name_at: int) -> int:
        """Offset of the '#' of the `# define NAME` whose name sits at name_at."""
        i = self.next_at(name_at)
        return self.start[i - 2] if i >= 2 and self.text[i - 2] == "#" else name_at

    def storage_words(self, start: int, stop: int) -> list:
        i, out = self.next_at(start), []
        while i < len(self.start) and self.start[i] < stop:
            if self.text[i] in _STORAGE_WORDS:
                out.append([self.start[i], self.end[i]])
            i += 1
        return out

    def semicolon_after(self, offset: int) -> int | None:
        i = self.next_at(offset)
        return self.end[i] if i < len(self.text) and self.text[i] == ";" else None

    def head_start(self, start: int, floor: int) -> int:
        """Where a declaration really begins: clang leaves out leading words that expand to
        nothing or to attributes (`asmlinkage __visible`); they lie after the previous one's end."""
        i = self.next_at(start) - 1
        while i >= 0 and self.start[i] >= floor and not self.in_directive[i] and self.text[i] not in (";", "}", "{"):
            start = self.start[i]
            i -= 1
        return start

    def statement_end(self, end: int, ceiling: int) -> int:
        """The ';' closing a declaration whose extent stops early (`int x __read_mostly;`)."""
        i, depth = self.next_at(end), 0
        while i < len(self.text) and self.start[i] < ceiling and not self.in_directive[i]:
            word = self.text[i]
            if word in ("(", "[", "{"):
                depth += 1
            elif word in (")", "]", "}"):
                depth -= 1
                if depth < 0:
                    break
            elif word == ";" and depth == 0:
                return self.end[i]
            i += 1
        return end


# --- declarations ---------------------------------------------------------------------------

_FUNCTION_KINDS = {"FUNCTION_DECL"}
_TYPE_KINDS = {"STRUCT_DECL", "UNION_DECL", "ENUM_DECL", "TYPEDEF_DECL"}
_STORAGE = {"STATIC": "static", "EXTERN": "extern"}


_DECL_REF_EXPR, _TYPE_REF, _VAR_DECL = 101, 43, 9  # CXCursorKind values, compared raw for speed


def _descendants(cursor, parents: dict | None = None) -> list:
    """Every cursor below `cursor` in one libclang traversal (walk_preorder re-enters per level);
    `parents`, if given, is filled with cursor hash -> parent cursor, and ("first", hash) -> the
    hash of that cursor's first child (cursors of two traversals do not compare equal)."""
    from clang import cindex as ci

    out = []

    def visit(child, parent, _data):
        child._tu = cursor._tu
        out.append(child)
        if parents is not None:
            parent._tu = cursor._tu
            parents[child.hash] = parent
            parents.setdefault(("first", parent.hash), child.hash)
        return 2  # CXChildVisit_Recurse

    ci.conf.lib.clang_visitChildren(cursor, ci.callbacks["cursor_visit"](visit), None)
    return out


def _is_callee(ref, parents: dict) -> bool:
    """A function reference that is the callee of a direct call (through implicit casts/parens)."""
    node = ref
    while (up := parents.get(node.hash)) is not None and up.kind.name in ("UNEXPOSED_EXPR", "PAREN_EXPR"):
        node = up
    if up is None or up.kind.name != "CALL_EXPR":
        return False
    return parents.get(("first", up.hash)) == node.hash


def _body_facts(cursor):
    """(refs, addr_refs, type_refs, local statics) of a definition's subtree."""
    refs: dict[str, None] = {}  # ordered sets
    addr: dict[str, None] = {}
    types: dict[str, None] = {}
    statics = []
    parents: dict = {}
    for c in _descendants(cursor, parents):
        kind = c._kind_id
        if kind == _DECL_REF_EXPR:
            r = c.referenced
            if (
                r is not None
                and r.kind.name in ("FUNCTION_DECL", "VAR_DECL")
                and (
                    r.semantic_parent is None
                    or r.semantic_parent.kind.name == "TRANSLATION_UNIT"
                    or r.storage_class.name == "EXTERN"
                )
            ):
                refs[r.spelling] = None
                if r.kind.name == "FUNCTION_DECL" and not _is_callee(c, parents):
                    addr[r.spelling] = None  # its address: a pointer that may outlive the patch module
        elif kind == _TYPE_REF:
            r = c.referenced
            if r is not None and r.spelling:
                types[r.spelling] = None
        elif kind == _VAR_DECL and c.storage_class.name == "STATIC":
            ci, lib = _lib()
            # start/end: where the declaration is written (inside a macro's use: that use's extent)
            decl, problem = extern_decl(c, c.spelling, None)
            statics.append(
                {
                    "name": c.spelling,
                    "type": c.type.spelling,
                    "const": _const(c.type),
                    "line": c.location.line,
                    "section": printed_section(pretty(lib, ci, c)),
                    "start": c.extent.start.offset,
                    "end": c.extent.end.offset,
                    "extern_decl": decl,
                    "extern_problem": problem,
                }
            )
    if cursor.kind.name == "VAR_DECL":
        refs.pop(cursor.spelling, None)  # LIST_HEAD(x) points at itself
    return list(refs), list(addr), list(types), statics


def _classify(c, printed: str, toks: Tokens) -> str:
    k = c.kind.name
    if k == "UNEXPOSED_DECL" and not printed:
        i = toks.next_at(c.extent.start.offset)
        if i < len(toks.text) and toks.text[i] == ";" and toks.end[i] == c.extent.end.offset:
            return "empty"  # a stray ';' (`fs_initcall(f);` where the macro brought its own)
    if k in _FUNCTION_KINDS:
        return "function"
    if k == "VAR_DECL":
        return "variable"
    if k in _TYPE_KINDS:
        return "type"
    if k == "UNEXPOSED_DECL" and printed.startswith("__asm"):
        return "asm"  # a file-scope asm() statement (EXPORT_SYMBOL, initcalls)
    return "other"


def _macro_at(macros: list, offset: int) -> tuple | None:
    """(start, end, name) of the outermost macro invocation (sorted, disjoint) holding offset."""
    i = bisect_left(macros, (offset + 1,)) - 1
    return macros[i] if i >= 0 and macros[i][0] <= offset < macros[i][1] else None


def _address(f) -> int:
    """Identity of a clang File (cheaper than its name)."""
    return ctypes.cast(f.obj, ctypes.c_void_p).value or 0


def collect(tu, path: str, data: bytes) -> tuple[list[Decl], list, Tokens]:
    """(declarations, #define directives, tokens) of the main file."""
    ci, lib = _lib()
    toks = Tokens(tu, path, data)
    main, macros, decls, defines = [], [], [], []
    main_file = _address(tu.get_file(path))
    for c in tu.cursor.get_children():
        f = c.location.file  # where it is expanded: macro-made declarations count as the file's
        if f is None or _address(f) != main_file:
            continue
        if c.kind.name == "MACRO_INSTANTIATION":
            macros.append((c.extent.start.offset, c.extent.end.offset, c.spelling))
        elif c.kind.name == "MACRO_DEFINITION":
            defines.append(
                {"name": c.spelling, "start": toks.directive_start(c.extent.start.offset), "end": c.extent.end.offset}
            )
        elif c.kind.is_declaration():
            main.append(c)
    macros.sort()
    # outermost only: a macro whose extent lies inside an earlier one is an argument or body use
    outer, reach = [], -1
    for s, e, name in macros:
        if e > reach:
            outer.append((s, e, name))
            reach = e
    for c in main:
        decls.append(_decl(c, ci, lib, toks, outer))
    _settle(decls, toks)
    return decls, defines, toks


def _settle(decls: list[Decl], toks: Tokens) -> None:
    """Widen each extent to the words clang leaves out around it, never into a neighbour."""
    ends = sorted(d.end for d in decls)
    starts = sorted(d.start for d in decls)
    nested, reach, reach_start = set(), -1, -1
    for d in sorted(decls, key=lambda d: (d.start, -d.end)):
        if reach_start < d.start < reach:  # inside another (`static struct s {..} v;`)
            nested.add(id(d))
        if d.end > reach:
            reach, reach_start = d.end, d.start
    for d in decls:
        if id(d) in nested:
            continue
        floor = ends[bisect_right(ends, d.start) - 1] if bisect_right(ends, d.start) else 0
        d.start = toks.head_start(d.start, floor)
        if d.kind == "type":
            d.end = toks.semicolon_after(d.end) or d.end
        elif not (d.kind == "function" and d.is_definition and not d.alias):  # an alias ends at its ';'
            i = bisect_right(starts, d.end - 1)
            d.end = toks.statement_end(d.end, starts[i] if i < len(starts) else len(toks.data))
        if d.kind in ("function", "variable") and d.macro is None:
            d.storage_tokens = toks.storage_words(d.start, d.name_offset)


def _decl(c, ci, lib, toks: Tokens, macros: list) -> Decl:
    printed = pretty(lib, ci, c)
    kind = _classify(c, printed, toks)
    start, end = c.extent.start.offset, c.extent.end.offset
    storage = _STORAGE.get(c.storage_class.name, "none")
    definition = c.is_definition() or (kind == "variable" and storage != "extern")  # tentative too
    name_at = c.location.offset
    macro = _macro_at(macros, name_at)
    if macro:  # clang may collapse a macro-made declaration's extent to one point
        start, end = min(start, macro[0]), max(end, macro[1])
    name = "" if kind == "type" and "(unnamed " in c.spelling else c.spelling
    d = Decl(
        name=name,
        kind=kind,
        cursor=c.kind.name,
        storage=storage,
        is_definition=definition,
        start=start,
        end=max(end, start),
        name_offset=name_at,
        macro=macro[2] if macro else None,
    )
    if kind in ("function", "variable"):
        d.section = printed_section(printed)
        d.notrace = "__attribute__((no_instrument_function))" in printed
        noreturn = kind == "function" and (
            "__attribute__((noreturn))" in c.type.spelling  # a type attribute
            or "_Noreturn" in printed
        )
        d.extern_decl, d.extern_problem = extern_decl(c, c.spelling, d.section, noreturn)
        if kind == "variable":
            d.const = _const(c.type)
        if definition:
            d.refs, d.addr_refs, d.type_refs, d.local_statics = _body_facts(c)
        d.alias = printed_alias(printed)
        if d.alias:  # the object defines the name (as the target): kept or dropped like a definition
            d.is_definition, d.refs = True, [d.alias]
    return d


# --- the whole run --------------------------------------------------------------------------


def _diagnostics(tu, path: str) -> dict:
    errors = [d for d in tu.diagnostics if d.severity >= 3]
    where = [(d.location.file.name if d.location.file else "", d.location.line, d.spelling) for d in errors]
    return {
        "errors": len(errors),
        "main_file_errors": sum(1 for f, _, _ in where if f == path),
        "first": [f"{f}:{line}: {msg}" for f, line, msg in where[:10]],
    }


def facts(cmd_file: str, cwd: str, source: str | None = None) -> dict:
    """Parse the TU as Kbuild compiled it (from `cwd`, Kbuild's objtree) and describe its main file."""
    from clang import cindex as ci

    argv = read_command(cmd_file)
    args, recorded = clang_args(argv)
    path = source or recorded
    if not path:
        raise ValueError(f"{cmd_file}: the command names no C source")
    cwd = os.path.abspath(cwd)
    path = os.path.join(cwd, path)  # unchanged when absolute
    with open(path, "rb") as f:
        data = f.read()
    # relative -I/-include paths are Kbuild's objtree-relative ones
    tu = ci.Index.create().parse(
        path, args=["-working-directory", cwd, *args], options=ci.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD
    )
    decls, defines, toks = collect(tu, path, data)
    return {
        "schema": SCHEMA,
        "file": path,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "compiler": argv[0],
        "clang_args": args,
        "diagnostics": _diagnostics(tu, path),
        "directives": toks.directives(),
        "defines": defines,
        "decls": [asdict(d) for d in decls],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m kgenv.build.cfacts", description=__doc__.splitlines()[0])
    p.add_argument("--cmd", required=True, help="the TU's Kbuild .cmd file")
    p.add_argument("--cwd", required=True, help="directory Kbuild ran the compiler in (the objtree)")
    p.add_argument("--source", help="C file to describe (default: the one the command compiles)")
    p.add_argument("--out", required=True, help="where to write the facts JSON")
    a = p.parse_args(argv)
    try:
        result = facts(a.cmd, a.cwd, a.source)
    except (OSError, ValueError, KgenvError) as e:
        print(f"cfacts: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # libclang's TranslationUnitLoadError and friends
        print(f"cfacts: {a.cmd}: libclang failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, a.out)
    d = result["diagnostics"]
    print(f"cfacts: {path_tail(result['file'])}: {len(result['decls'])} declarations, {d['errors']} clang error(s)")
    return 0


def path_tail(path: str) -> str:
    return "/".join(path.split("/")[-3:])


if __name__ == "__main__":
    sys.exit(main())
