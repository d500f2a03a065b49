"""A vendor's finished kernel build directory: where its parts are, and whether they belong together.

Everything read from BUILD_DIR must stay inside it (a symlink leading out is refused); the one
exception is the `source` symlink Kbuild writes into an O= directory, which names the source tree.
"""

import gzip
import mmap
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

from kgenv.env.fingerprint import read_config, read_defines, read_vmlinux
from kgenv.env.toolchain import CompilerId
from kgenv.errors import RefusedError, UserError

LINUX_ELFNOTE_BUILD_SALT = 0x100  # include/linux/build-salt.h
# "Linux version R (user@host) (compiler, linker) #1 SMP ..." (the compiler part has parentheses)
BANNER_RE = re.compile(r"^Linux version (\S+) \(([^)]*)\) \((.*)\) (#\S+.*)$")


@dataclass(frozen=True)
class BuildTree:
    root: Path  # BUILD_DIR, resolved
    source: Path  # the source tree on this machine, resolved
    source_link: str  # text of the `source` symlink ("" for an in-tree build)
    config: Path
    vmlinux: Path
    generated: Path  # include/generated
    symvers: Path
    bzimage: Path | None
    kernelvariables: Path | None  # Debian's record of its make line, when the build dir has one

    @property
    def in_tree(self) -> bool:
        return self.source == self.root


def member(root: Path, rel: str) -> Path | None:
    """root/rel if it exists and resolves inside root, None if it does not exist."""
    p = root / rel
    if not os.path.lexists(p):
        return None
    real = p.resolve()
    if not real.is_relative_to(root):
        raise RefusedError(f"{p}: symlink leads outside {root} (to {real})")
    return real


def required_member(root: Path, rel: str, what: str) -> Path:
    """root/rel as member() finds it; UserError naming `what` when it is missing."""
    p = member(root, rel)
    if p is None:
        raise UserError(f"{root / rel}: missing ({what})")
    return p


def open_tree(path: Path) -> BuildTree:
    """The parts of a build directory; UserError for missing ones, RefusedError for escapes."""
    if not path.is_dir():
        raise UserError(f"{path}: not a directory")
    root = path.resolve()
    link = root / "source"
    if link.is_symlink():
        text = os.readlink(link)
        source = link.resolve()
        if not (source / "Makefile").is_file() or not (source / "Kconfig").is_file():
            raise UserError(f"{link}: points at {text}, which is not a kernel source tree here")
    elif (root / "Makefile").is_file() and (root / "Kconfig").is_file():
        text, source = "", root
    else:
        raise UserError(f"{root}: neither an O= build directory (no 'source' symlink) nor a kernel source tree")
    generated = required_member(root, "include/generated", "include/generated of the build")
    if not generated.is_dir():
        raise UserError(f"{generated}: not a directory")
    kv = member(root, ".kernelvariables")
    return BuildTree(
        root=root,
        source=source,
        source_link=text,
        config=required_member(root, ".config", "the build's kernel config"),
        vmlinux=required_member(root, "vmlinux", "the linked kernel with symbols"),
        generated=generated,
        symvers=required_member(root, "Module.symvers", "the build's module symbol versions"),
        bzimage=member(root, "arch/x86/boot/bzImage"),
        kernelvariables=kv if kv and kv.is_file() else None,
    )


def _autoconf_defines(config: dict[str, str]) -> dict[str, str]:
    """What Kconfig writes into autoconf.h for a .config (y → 1, m → NAME_MODULE 1)."""
    out = {}
    for k, v in config.items():
        if v == "y":
            out[f"CONFIG_{k}"] = "1"
        elif v == "m":
            out[f"CONFIG_{k}_MODULE"] = "1"
        elif v != "n":
            out[f"CONFIG_{k}"] = v
    return out


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    try:  # hex options: ".config 0" is "autoconf.h 0x0"
        return int(a, 0) == int(b, 0)
    except ValueError:
        return a.strip('"') == b.strip('"').replace('\\"', '"')


def config_vs_autoconf(config: Path, generated: Path) -> list[str]:
    """Options on which .config and the autoconf.h the build compiled against disagree."""
    autoconf = generated / "autoconf.h"
    if not autoconf.is_file():
        raise UserError(f"{autoconf}: missing (the build's generated config header)")
    got = dict(re.findall(r"^#define (CONFIG_\w+) (.*)$", autoconf.read_text(errors="replace"), re.M))
    want = _autoconf_defines(read_config(config))
    return sorted(k for k in set(got) | set(want) if not _same_value(got.get(k, "-"), want.get(k, "-")))


def _notes(path: Path) -> tuple[dict[tuple[str, str | int], bytes], bool]:
    """(ELF notes by (owner, type: pyelftools names the types it knows, others stay ints), whether there is
    a symbol table)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        out: dict[tuple[str, str | int], bytes] = {}
        symtab = False
        for sec in elf.iter_sections():
            symtab = symtab or sec["sh_type"] == "SHT_SYMTAB"
            if isinstance(sec, NoteSection):  # pyelftools makes one of every SHT_NOTE section
                for note in sec.iter_notes():
                    desc = note["n_desc"]
                    out[(note["n_name"], note["n_type"])] = desc if isinstance(desc, bytes) else str(desc).encode()
        return out, symtab


def embedded_config(path: Path) -> str | None:
    """The .config CONFIG_IKCONFIG embeds in the kernel (gzip between IKCFG_ST and IKCFG_ED), or None."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        start = m.find(b"IKCFG_ST")
        if start < 0:
            return None
        end = m.find(b"IKCFG_ED", start)
        if end < 0:
            return None
        try:
            return gzip.decompress(m[start + 8 : end]).decode(errors="replace")
        except (OSError, EOFError, zlib.error):
            return None


def bzimage_version(path: Path) -> str:
    """The kernel_version string of an x86 boot image's setup header (boot protocol ≥ 2.00)."""
    with open(path, "rb") as f:
        head = f.read(0x8000)
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise UserError(f"{path}: not an x86 boot image (no HdrS setup header)")
    offset = struct.unpack_from("<H", head, 0x20E)[0] + 0x200
    return head[offset : offset + 256].split(b"\0", 1)[0].decode(errors="replace")


def _compiler_of_comment(comment: str) -> CompilerId | None:
    m = re.match(r"GCC: (\(.*)$", comment)
    return CompilerId.parse(f"gcc {m.group(1)}") if m else None


def check(tree: BuildTree) -> dict:
    """Refuse a build dir whose parts do not belong together; return read_vmlinux's facts."""
    binary = read_vmlinux(tree.vmlinux)
    where = tree.vmlinux
    if not binary["build_id"]:
        raise RefusedError(f"{where}: no GNU build-id note; the env could not be tied to this binary")
    release = binary["banner"].split()[2]
    uts = {
        **read_defines(tree.generated / "utsrelease.h"),
        **read_defines(tree.generated / "compile.h"),
        **read_defines(tree.generated / "utsversion.h"),
    }
    if uts.get("UTS_RELEASE", release) != release:
        raise RefusedError(
            f"{where}: banner release {release} is not {uts['UTS_RELEASE']} of {tree.generated / 'utsrelease.h'}"
        )
    config = read_config(tree.config)
    cc_text = config["CC_VERSION_TEXT"]
    cc = CompilerId.parse(cc_text)
    built_by = _compiler_of_comment(binary["comment"])
    if built_by is None:
        raise RefusedError(f"{where}: no GCC line in .comment; cannot tell which compiler built it")
    if diff := cc.differences(built_by):
        raise RefusedError(
            f"{tree.config}: CONFIG_CC_VERSION_TEXT {cc_text!r} is not the compiler of {where} "
            f"({binary['comment']!r}: {'; '.join(diff)})"
        )
    if "LINUX_COMPILE_BY" in uts and "UTS_VERSION" in uts:
        want = (
            f"Linux version {release} ({uts['LINUX_COMPILE_BY']}@{uts['LINUX_COMPILE_HOST']}) "
            f"({uts.get('LINUX_COMPILER', cc_text)}) {uts['UTS_VERSION']}"
        )
        if binary["banner"] != want:
            raise RefusedError(f"{where}: banner {binary['banner']!r} is not what {tree.generated} says ({want!r})")
    notes, symtab = _notes(tree.vmlinux)
    if not symtab:
        raise RefusedError(f"{where}: stripped (no symbol table); the build's own vmlinux is needed")
    salt = notes.get(("Linux", LINUX_ELFNOTE_BUILD_SALT))
    salt_text = salt.rstrip(b"\0").decode(errors="replace") if salt is not None else None
    if salt_text is not None and salt_text != config.get("BUILD_SALT", ""):
        raise RefusedError(
            f"{tree.config}: CONFIG_BUILD_SALT {config.get('BUILD_SALT', '')!r} is not the salt "
            f"{salt_text!r} in {where}"
        )
    if differ := config_vs_autoconf(tree.config, tree.generated):
        raise RefusedError(
            f"{tree.config}: differs from the autoconf.h the kernel was compiled with "
            f"({len(differ)} options, e.g. {', '.join(differ[:5])})"
        )
    embedded = embedded_config(tree.vmlinux)
    if embedded is not None and embedded != tree.config.read_text(errors="replace"):
        raise RefusedError(f"{tree.config}: differs from the config embedded in {where} (CONFIG_IKCONFIG)")
    linked = tree.vmlinux.stat().st_mtime
    for p in (tree.config, tree.generated / "autoconf.h"):
        if p.stat().st_mtime > linked + 1:
            raise RefusedError(f"{p}: changed after {where} was linked; rebuild or restore the build's config")
    if tree.bzimage:
        got = bzimage_version(tree.bzimage)
        m = BANNER_RE.match(binary["banner"])
        want = f"{release} ({m.group(2)}) {m.group(4)}" if m else release
        if got != want:
            raise RefusedError(f"{tree.bzimage}: version {got!r} is not the kernel of {where} ({want!r})")
    return binary
