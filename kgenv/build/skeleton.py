"""Render the module skeleton in kernel/livepatch/ (klp_patch/klp_object/klp_func) and its Kbuild."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kgenv.build.target import VMLINUX
from kgenv.elf.symbols import STB_LOCAL, STT_FILE, SymbolIndex
from kgenv.env import kbuildcmd
from kgenv.errors import UserError

TEMPLATES = Path(__file__).resolve().parents[2] / "kernel" / "livepatch"
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,55}")
# flags of a TU's own compile command the module build must repeat (defines and include dirs);
# Kbuild supplies the rest, including KBUILD_MODNAME for the patch module itself
_KEEP_FLAG = re.compile(r"-(I|D|U|include)")
_SKIP_FLAG = re.compile(r"-D(MODULE$|KBUILD_|__KBUILD_)")
_BUILD_ID = re.compile(r"[0-9a-f]{2,128}")  # hex of a GNU build-id note (the guard reads up to 64 bytes)
_NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what MODULE_IMPORT_NS() stringifies


@dataclass(frozen=True)
class Replacement:
    """One klp_func: the running function and the object it lives in."""

    objname: str
    old_name: str
    sympos: int
    new_func: str = ""  # the global alias its generated file defines (default livepatch_<old_name>)

    @property
    def new(self) -> str:
        return self.new_func or f"livepatch_{self.old_name}"


@dataclass(frozen=True)
class Source:
    """One generated C file of the module and the extra flags its TU was compiled with."""

    filename: str
    cflags: tuple[str, ...] = ()


def _c_ident(name: str) -> str:
    return re.sub(r"\W", "_", name)


def tu_flags(flags: list[str], srctree: str, objtree: str = "") -> tuple[str, ...]:
    """-I/-D/-U flags of a TU's compile command; relative include dirs are relative to the
    directory make ran in (the O= tree), so they are made absolute against it."""
    out, it = [], iter(flags)
    base = f"{srctree}/{objtree}".rstrip("/") if objtree and not objtree.startswith("/") else (objtree or srctree)
    for f in it:
        if f in ("-I", "-D", "-U", "-include"):  # the split form: the value is the next word
            f += next(it, "")
        if not _KEEP_FLAG.match(f) or _SKIP_FLAG.match(f) or f.startswith("-include"):
            continue
        if f.startswith("-I") and not f[2:].startswith("/"):
            f = f"-I{base}/{f[2:].removeprefix('./')}"
        out.append(f)
    return tuple(dict.fromkeys(out))


def guard_ids(build_id: str, modules: Mapping[str, str] | None = None) -> dict[str, str]:
    """Object name -> the GNU build-id its pre_patch guard requires: vmlinux's as the env recorded
    it, each target module's as shipped."""
    out = {VMLINUX: build_id, **(modules or {})}
    bad = [o for o, b in out.items() if not _BUILD_ID.fullmatch(b)]
    if bad:
        raise UserError(
            f"no usable GNU build-id for {', '.join(sorted(bad))}: the module could not guard against another build"
        )
    return out


def symbol_namespaces(symvers: str) -> dict[str, str]:
    """Exported symbol -> its namespace, for the namespaced exports of a Module.symvers
    (crc, symbol, module, export type, namespace; tab-separated)."""
    out = {}
    for line in symvers.splitlines():
        parts = line.split("\t")
        if len(parts) >= 5 and parts[4]:
            out[parts[1]] = parts[4]
    return out


def referenced_symbols(objects: Iterable[Path]) -> set[str]:
    """Every global name the objects reference or define. The generated sources keep a subset of
    these units' code and turn their other definitions into declarations, so the module's
    undefined symbols are among these names."""
    return {
        s.name
        for o in objects
        for s in SymbolIndex.open(o).symbols
        if s.name and s.type != STT_FILE and (not s.defined or s.bind != STB_LOCAL)
    }


def import_namespaces(namespaces: Mapping[str, str], names: Iterable[str]) -> list[str]:
    """The symbol namespaces the module must import: those of the namespaced exports among `names`.
    modpost refuses a module that references one without importing it, and the loader refuses to
    bind it; importing a namespace whose symbols end up as livepatch relocations costs nothing."""
    out = sorted({namespaces[n] for n in names if n in namespaces})
    bad = [ns for ns in out if not _NAMESPACE.fullmatch(ns)]
    if bad:
        raise UserError(f"Module.symvers: symbol namespace {bad[0]!r} is not a C identifier MODULE_IMPORT_NS takes")
    return out


# a pointer to a function new in the patch may be stored in kernel state: the module must outlive it
PIN = (
    "\t/* kgenv: pointers to this module's new functions or data may outlive it; once enabled it stays loaded */\n"
    "\tif (!ret)\n\t\t__module_get(THIS_MODULE);"
)


def render_registration(
    name: str,
    release: str,
    reps: list[Replacement],
    ids: Mapping[str, str],
    pinned: bool = False,
    namespaces: Iterable[str] = (),
) -> str:
    """The module's registration file from kernel/livepatch/livepatch.c.in. Every klp_object
    (vmlinux always, with no functions when only modules are patched) gets the template's
    build-id guard as its pre_patch callback, requiring the build-id `ids` (see guard_ids) names;
    the module imports `namespaces` (see import_namespaces)."""
    if set(ids) != {VMLINUX, *(r.objname for r in reps)}:
        raise ValueError(f"guard build-ids for {sorted(ids)} do not match the patched objects")
    order = sorted(reps, key=lambda r: (r.old_name, r.new))
    decls = "\n".join(f"extern void {r.new}(void);" for r in order)
    funcs, objects = [], []
    for objname in sorted({VMLINUX, *(r.objname for r in reps)}, key=lambda o: (o != VMLINUX, o)):
        rows = "\n".join(
            f'\t{{ .old_name = "{r.old_name}", .new_func = {r.new}, .old_sympos = {r.sympos} }},'
            for r in order
            if r.objname == objname
        )
        funcs.append(f"static struct klp_func funcs_{_c_ident(objname)}[] = {{\n{rows}\n\t{{ }}\n}};")
        label = "NULL" if objname == VMLINUX else f'"{objname}"'
        objects.append(
            f"\t{{ .name = {label}, .funcs = funcs_{_c_ident(objname)}, .callbacks = {{ .pre_patch = kgenv_guard }} }},"
        )
    text = (TEMPLATES / "livepatch.c.in").read_text()
    for key, value in (
        ("DECLS", decls),
        ("FUNCS", "\n\n".join(funcs)),
        ("OBJECTS", "\n".join(objects)),
        ("GUARD_IDS", "\n".join(f'\t{{ "{o}", "{b}" }},' for o, b in sorted(ids.items()))),
        ("NAME", name),
        ("RELEASE", release),
        ("BUILD_ID", ids[VMLINUX]),
        ("PIN", PIN if pinned else ""),
        ("IMPORTS", "".join(f"MODULE_IMPORT_NS({ns});\n" for ns in namespaces)),
    ):
        text = text.replace(f"@{key}@", value)
    return text


def render_kbuild(name: str, registration: str, sources: list[Source]) -> str:
    objs = [registration.removesuffix(".c") + ".o"] + [s.filename.removesuffix(".c") + ".o" for s in sources]
    # the flags are the words gcc got: quoted for the recipe's shell, then '$' and '#' escaped for make
    cflags = [
        f"CFLAGS_{s.filename.removesuffix('.c')}.o := {kbuildcmd.make_escape(shlex.join(s.cflags))} "
        "-Wno-unused-function -Wno-unused-variable -Werror=pragmas"  # a #pragma redefine_extname must apply
        for s in sources
    ]
    text = (TEMPLATES / "Kbuild.in").read_text()
    return text.replace("@NAME@", name).replace("@OBJS@", " ".join(objs)).replace("@CFLAGS@", "\n".join(cflags))
