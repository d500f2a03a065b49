"""Which running object a translation unit was linked into, and where its symbols sit in it."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kgenv.boot.deps import LoadPlan, ModuleTree, plan
from kgenv.elf.reader import open_elf
from kgenv.elf.symbols import STB_LOCAL, STT_FUNC, STT_NOTYPE, STT_OBJECT, Symbol
from kgenv.env import kbuildcmd
from kgenv.errors import ToolError, UserError
from kgenv.manifest import Manifest
from kgenv.verify.mapping import OK, Mapper, ObjectFile
from kgenv.verify.sources import Binary, open_binary

VMLINUX = "vmlinux"
SHT_NOTE, NT_GNU_BUILD_ID = 7, 3
_KALLSYMS_TYPES = (STT_FUNC, STT_OBJECT, STT_NOTYPE)


@dataclass(frozen=True)
class Target:
    """The livepatch object a TU belongs to: 'vmlinux' or a module name, and its shipped binary."""

    objname: str
    binary_path: Path

    @property
    def is_module(self) -> bool:
        return self.objname != VMLINUX


def module_name(flags: list[str]) -> str | None:
    """The module a TU is part of (Kbuild adds -DMODULE only then), else None for built-in code."""
    if "-DMODULE" not in flags:
        return None
    for f in flags:
        if f.startswith("-DKBUILD_MODNAME="):
            return f.split("=", 1)[1].strip("'\"")
    raise ToolError("module object without -DKBUILD_MODNAME in its compile command")


def modname_literal(flags: list[str]) -> str | None:
    """The KBUILD_MODNAME a TU was compiled with, as the C string literal Kbuild defined (built-in
    code has one too), or None when the command has no plain one."""
    for f in flags:
        if f.startswith("-DKBUILD_MODNAME="):
            value = f.split("=", 1)[1]
            return value if re.fullmatch(r'"[A-Za-z0-9_-]+"', value) else None
    return None


def modules_dir(m: Manifest) -> Path:
    """The shipped modules beside the shipped kernel image: <image root>/lib/modules/<release>."""
    vmlinuz = m.file("vmlinuz")
    return vmlinuz.parent.parent / "lib" / "modules" / m.kernel.release


def shipped_modules(m: Manifest) -> dict[str, Path]:
    """Module name -> shipped .ko, from modules.order (depmod's files are made at install time)."""
    root = modules_dir(m)
    order = root / "modules.order"
    if not order.is_file():
        raise ToolError(f"{order}: missing; fetch the env's kernel again (kgenv envs restore {m.name})")
    return {Path(line).name.removesuffix(".ko").replace("-", "_"): root / line for line in order.read_text().split()}


def module_tree(m: Manifest) -> ModuleTree:
    """The env's shipped modules, keyed by the kernel's build-id for the alias index cache."""
    return ModuleTree(modules_dir(m), shipped_modules(m), m.kernel.build_id)


def load_plan(m: Manifest, targets: Iterable[Target]) -> LoadPlan:
    """The shipped modules the guest loads before a patch of these targets: each after its
    `depends=` and `softdep=pre:` modules (kgenv.boot.deps); nothing for vmlinux."""
    return plan(module_tree(m), [t.objname for t in targets if t.is_module])


def gnu_build_id(path: Path) -> str:
    """The hex of a binary's GNU build-id (the first NT_GNU_BUILD_ID note owned by "GNU", as the
    patch module's guard reads it at run time), or "" when it has none."""
    elf = open_elf(path)
    for sec in elf.sections:
        if sec.type != SHT_NOTE:
            continue
        data, off = bytes(elf.section_data(sec)), 0
        while off + 12 <= len(data):
            namesz, descsz, ntype = struct.unpack_from("<III", data, off)
            name = off + 12
            desc = name + (namesz + 3) // 4 * 4
            if desc + descsz > len(data):
                break
            if ntype == NT_GNU_BUILD_ID and data[name : name + namesz] == b"GNU\0" and descsz:
                return data[desc : desc + descsz].hex()
            off = desc + (descsz + 3) // 4 * 4
    return ""


def find(m: Manifest, cmd_file: Path) -> Target:
    """vmlinux, or the module the TU's compile command names, with its shipped binary."""
    mod = module_name(kbuildcmd.read_command(cmd_file))
    if mod is None:
        return Target(VMLINUX, m.file("vmlinux"))
    ko = shipped_modules(m).get(mod)
    if ko is not None:
        return Target(mod, ko)
    raise UserError(f"module {mod} is not among the modules shipped with {m.kernel.release}")


def kallsyms_pos(binary: Binary, sym: Symbol) -> int:
    """The kernel's sympos for a symbol: 0 when its name is unique, else its 1-based place among
    same-named symbols in kallsyms order (address order in vmlinux, symtab order in a module)."""
    same = [s for s in binary.lookup(sym.name) if s.type in _KALLSYMS_TYPES]
    if len(same) <= 1:
        return 0
    key = (lambda s: s.value) if binary.linked else (lambda s: s.symidx)
    same.sort(key=key)
    return next(i for i, s in enumerate(same, 1) if s.symidx == sym.symidx)


class Resolver:
    """Finds a rebuilt TU's symbols in the running object: the copy of *this* TU for statics."""

    def __init__(self, target: Target, original: ObjectFile, binary: Binary | None = None):
        self.target = target
        self.binary = binary or open_binary(target.binary_path)
        self.obj = original
        self.mapper = Mapper(original, self.binary)

    def find(self, name: str, elsewhere: bool = True) -> Symbol | None:
        """The running binary's symbol the original object's `name` is, or None (inlined, absent).

        With `elsewhere`, a name the object never mentions may be a unique global of another TU
        (new code calling a kernel function the original file did not)."""
        syms = [s for s in self.obj.index.by_name.get(name, ()) if s.type != STT_FUNC or s.size]
        for sym in sorted(syms, key=lambda s: not s.defined):
            found, status = self.mapper.resolve(sym)
            if status == OK and found is not None:
                return found
        if not syms and elsewhere:  # not in the object at all: a global only a declaration names
            glob = [s for s in self.binary.lookup(name) if s.bind != STB_LOCAL]
            return glob[0] if len(glob) == 1 else None
        return None

    def present(self, name: str, kind: str = "") -> bool:
        """Does the running kernel have this file's definition of `name` out of line? A static
        inlined everywhere is absent from the object, and a same-named global elsewhere is not it."""
        return self.find(name, elsewhere=False) is not None

    def own_position(self, name: str) -> tuple[str, int] | None:
        """(objname, sympos) of `name` only where this TU's object names it and the running object
        itself defines it (not a symbol it takes from elsewhere)."""
        sym = self.find(name, elsewhere=False)
        return None if sym is None or not sym.defined else (self.target.objname, kallsyms_pos(self.binary, sym))

    def position(self, name: str) -> tuple[str, int] | None:
        """(objname, sympos) for a livepatch relocation to `name`, or None if not in the binary."""
        sym = self.find(name)
        return None if sym is None else (self.target.objname, kallsyms_pos(self.binary, sym))
