"""Read the toolchain fingerprint out of a shipped kernel: binary, config and generated headers."""

import hashlib
import mmap
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from kgenv.errors import UserError

CONFIG_KEYS = (
    "CC_VERSION_TEXT",
    "GCC_VERSION",
    "CLANG_VERSION",
    "LD_VERSION",
    "AS_VERSION",
    "LLD_VERSION",
    "PAHOLE_VERSION",
    "BUILD_SALT",
)


@dataclass(frozen=True)
class Fingerprint:
    """What the shipped kernel says about the toolchain and build that made it."""

    release: str
    banner: str
    comment: str
    build_id: str
    cc_version_text: str
    config: dict[str, str]
    compile_by: str
    compile_host: str
    linux_compiler: str
    uts_version: str
    producer: str  # DW_AT_producer of the first C unit: gcc's own record of the flags
    srctree: str
    objtree: str  # relative to srctree (the O= directory), "" for in-tree builds
    make: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def read_config(path: Path) -> dict[str, str]:
    """CONFIG_* values of a .config (quotes removed); UserError naming the file if it is not one."""
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read kernel config: {e.strerror}") from None
    values = {}
    for m in re.finditer(r"^CONFIG_(\w+)=(.*)$", text, re.M):
        v = m.group(2)
        values[m.group(1)] = v[1:-1].replace('\\"', '"') if v.startswith('"') else v
    if "CC_VERSION_TEXT" not in values:
        raise UserError(f"{path}: not a kernel .config (no CONFIG_CC_VERSION_TEXT)")
    return values


def read_defines(path: Path) -> dict[str, str]:
    """#define NAME "value" lines of a generated header such as compile.h."""
    if not path.exists():
        return {}
    return dict(re.findall(r'^#define\s+(\w+)\s+"(.*)"\s*$', path.read_text(), re.M))


def _elf(path: Path) -> tuple:
    try:
        f = open(path, "rb")
        elf = ELFFile(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read vmlinux: {e.strerror}") from None
    except ELFError as e:
        raise UserError(f"{path}: not an ELF file: {e}") from None
    if elf["e_machine"] != "EM_X86_64":
        raise UserError(f"{path}: not an x86-64 kernel ({elf['e_machine']})")
    return f, elf


def _build_id(elf) -> str:
    for sec in elf.iter_sections():
        if sec["sh_type"] == "SHT_NOTE":
            for note in sec.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                    desc = note["n_desc"]
                    return desc.hex() if isinstance(desc, bytes) else desc
    return ""


def _banner(f, path: Path) -> str:
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        # linux_banner is "Linux version <release> (...) #<n> ..." with a newline; the
        # compressed-boot copy lacks the "#n" and is skipped.
        for hit in re.finditer(rb"Linux version (\S+) \([^\n\0]*\) #\S+ [^\n\0]*\n", m):
            return hit.group(0).decode(errors="replace").strip()
    raise UserError(f"{path}: no 'Linux version' banner found; not a vmlinux?")


def _first_units(elf) -> tuple[str, str, str, str]:
    """(producer and comp_dir of the first C unit, srctree, objtree) from DWARF, or empty strings."""
    if not elf.has_dwarf_info():
        return "", "", "", ""
    producer, c_dir, abs_name, abs_dir = "", "", "", ""
    for i, cu in enumerate(elf.get_dwarf_info(relocate_dwarf_sections=False).iter_CUs()):
        attrs = cu.get_top_DIE().attributes
        val = {k: (a.value.decode(errors="replace") if isinstance(a.value, bytes) else "") for k, a in attrs.items()}
        if not producer and val.get("DW_AT_producer", "").startswith("GNU C"):
            producer, c_dir = val["DW_AT_producer"], val.get("DW_AT_comp_dir", "")
        if not abs_dir and val.get("DW_AT_name", "").startswith("/"):
            abs_name, abs_dir = val["DW_AT_name"], val.get("DW_AT_comp_dir", "")
        if (producer and abs_dir) or i > 50:
            break
    srctree = os.path.commonpath([abs_name, abs_dir]) if abs_name and abs_dir else ""
    objtree = os.path.relpath(abs_dir, srctree) if srctree else ""
    return producer, c_dir, srctree, "" if objtree == "." else objtree


def read_vmlinux(path: Path) -> dict:
    """Banner, .comment, build-id and DWARF facts of a vmlinux."""
    f, elf = _elf(path)
    with f:
        comment_sec = elf.get_section_by_name(".comment")
        comments = comment_sec.data().split(b"\0") if comment_sec else []
        comment = next((c.decode(errors="replace") for c in comments if c.startswith(b"GCC:") or b"clang" in c), "")
        producer, c_dir, srctree, objtree = _first_units(elf)
        # C units with a relative comp_dir beside absolute assembler units: the build mapped
        # the source prefix away for C only, i.e. through KCFLAGS (it affects debug info only).
        mapped = srctree if c_dir and not c_dir.startswith("/") else ""
        return {
            "banner": _banner(f, path),
            "comment": comment,
            "build_id": _build_id(elf),
            "producer": producer,
            "srctree": srctree,
            "objtree": objtree,
            "mapped_prefix": mapped,
        }


def make_variables(
    cfg: dict[str, str],
    compile_h: dict[str, str],
    uts: dict[str, str],
    release: str,
    mapped_prefix: str,
    kernelvariables: Path | None = None,
) -> dict[str, str]:
    """The make-line variables a faithful rebuild passes (they never reach .config)."""
    cc = cfg["CC_VERSION_TEXT"].split(" ", 1)[0]
    out = {"ARCH": "x86", "KERNELRELEASE": release, "CC": cc, "HOSTCC": cc}
    if kernelvariables and kernelvariables.exists():
        # Debian's record of its make line: CC = ... gcc-12, override KERNELRELEASE = ...
        m = re.search(r"^CC = .*\)(\S+)$", kernelvariables.read_text(), re.M)
        if m:
            out["CC"] = out["HOSTCC"] = re.sub(r"^\$\(CROSS_COMPILE\)", "", m.group(1))
    out["KBUILD_BUILD_USER"] = compile_h.get("LINUX_COMPILE_BY", "")
    out["KBUILD_BUILD_HOST"] = compile_h.get("LINUX_COMPILE_HOST", "")
    # "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)": the part after the flags is the timestamp.
    m = re.match(r"#(\S+) (?:SMP )?(?:PREEMPT\w* )?(?:RT )?(.*)$", uts.get("UTS_VERSION", ""))
    if m:
        out["KBUILD_BUILD_VERSION"] = m.group(1)
        out["KBUILD_BUILD_VERSION_TIMESTAMP"] = m.group(2)
    if mapped_prefix:
        out["KCFLAGS"] = f"-fdebug-prefix-map={mapped_prefix}/="
    return out


def fingerprint(vmlinux: Path, config: Path, generated: Path, kernelvariables: Path | None = None) -> Fingerprint:
    """The fingerprint of a shipped kernel from its vmlinux, .config and include/generated dir."""
    cfg = read_config(config)
    binary = read_vmlinux(vmlinux)
    compile_h = read_defines(generated / "compile.h")
    uts = {**read_defines(generated / "utsversion.h"), **read_defines(generated / "utsrelease.h"), **compile_h}
    release = uts.get("UTS_RELEASE") or binary["banner"].split()[2]
    if release != binary["banner"].split()[2]:
        raise UserError(f"{vmlinux}: banner release {binary['banner'].split()[2]} is not {release} of {generated}")
    if uts.get("UTS_VERSION") is None:
        uts["UTS_VERSION"] = re.sub(r"^.*?\) (#.*)$", r"\1", binary["banner"])
    srctree = binary["srctree"]
    return Fingerprint(
        release=release,
        banner=binary["banner"],
        comment=binary["comment"],
        build_id=binary["build_id"],
        cc_version_text=cfg["CC_VERSION_TEXT"],
        config={k: cfg.get(k, "") for k in CONFIG_KEYS},
        compile_by=compile_h.get("LINUX_COMPILE_BY", ""),
        compile_host=compile_h.get("LINUX_COMPILE_HOST", ""),
        linux_compiler=compile_h.get("LINUX_COMPILER", ""),
        uts_version=uts["UTS_VERSION"],
        producer=binary["producer"],
        srctree=srctree,
        objtree=binary["objtree"],
        make=make_variables(cfg, compile_h, uts, release, binary["mapped_prefix"], kernelvariables),
    )


def config_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
