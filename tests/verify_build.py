"""Test helpers: compile tiny C TUs with the host gcc and link them into a kernel-like static binary."""

from __future__ import annotations

import struct
import subprocess
import textwrap
from pathlib import Path

FTRACE = [
    "-O2",
    "-pg",
    "-mfentry",
    "-mrecord-mcount",
    "-fno-pic",
    "-fno-asynchronous-unwind-tables",
    "-fcf-protection=none",
    "-mno-red-zone",
    "-fno-stack-protector",
]

RUNTIME = """
void __fentry__(void) {}
void __x86_return_thunk(void) {}
void _start(void) { for (;;) ; }
"""


def compile_c(src_dir: Path, name: str, text: str, flags: list[str] = ()) -> Path:
    """Write `name` (may contain a directory) and compile it to an object next to it."""
    src = src_dir / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(textwrap.dedent(text))
    obj = src.with_suffix(".o")
    subprocess.run(
        ["gcc", *FTRACE, *flags, "-c", str(src), "-o", str(obj)], check=True, cwd=src.parent, capture_output=True
    )
    return obj


def runtime(src_dir: Path) -> Path:
    """__fentry__ and _start, compiled without instrumentation."""
    src = src_dir / "rt.c"
    src.write_text(RUNTIME)
    obj = src_dir / "rt.o"
    subprocess.run(["gcc", "-O2", "-fno-pic", "-c", str(src), "-o", str(obj)], check=True)
    return obj


def link(out: Path, objects: list[Path]) -> Path:
    """A static, non-PIE link: final addresses, __mcount_loc kept as its own section."""
    subprocess.run(
        ["gcc", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-o", str(out), *map(str, objects)],
        check=True,
        capture_output=True,
    )
    return out


def link_module(out: Path, objects: list[Path], sign: bool = True) -> Path:
    """`ld -r` like a .ko, with a fake appended signature trailer."""
    subprocess.run(["ld", "-r", "-o", str(out), *map(str, objects)], check=True)
    if sign:
        sig = b"\x30\x82" + bytes(100)
        info = struct.pack(">BBBBB3sI", 0, 0, 2, 0, 0, b"\0\0\0", len(sig))
        with open(out, "ab") as f:
            f.write(sig + info + b"~Module signature appended~\n")
    return out


def fake_kcore(binary: Path, out_core: Path, out_kallsyms: Path, patch: dict[int, bytes]) -> None:
    """An ELF core whose PT_LOAD holds the binary's code (with boot-time patches) + a kallsyms file."""
    from kgenv.elf.symbols import STT_FUNC, STT_OBJECT, SymbolIndex

    index = SymbolIndex.open(binary)
    text = index.elf.section(".text")
    blob = bytearray(index.elf.section_data(text))
    for addr, data in patch.items():
        blob[addr - text.addr : addr - text.addr + len(data)] = data
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 4, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 64 + 56, text.addr, 0, len(blob), len(blob), 4096)
    out_core.write_bytes(ehdr + phdr + bytes(blob))
    lines = []
    for s in index.symbols:
        if s.type in (STT_FUNC, STT_OBJECT) and s.name and s.defined:
            letter = "t" if s.type == STT_FUNC else "d"
            lines.append(f"{s.value:016x} {letter.upper() if s.bind else letter} {s.name}")
    out_kallsyms.write_text("\n".join(lines) + "\n")
