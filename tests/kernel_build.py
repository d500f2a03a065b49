"""Host rebuild of Debian kernel objects at Debian's own build path (CI swaps this for the env image)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kgenv.elf.symbols import SymbolIndex
from kgenv.errors import ToolError

# Debian builds in this srctree and O= dir; both end up in the objects (DWARF, __FILE__ strings)
BUILD_ROOT = Path("/build/reproducible-path")
O_DIR = "debian/build/build_amd64_none_amd64"
_BANNER = re.compile(rb"Linux version (\S+) \(([^@]+)@([^)]+)\) \((\S+) .*?#\d+ (?:[A-Z_ ]+ )?(Debian .*?\))")


@dataclass(frozen=True)
class Recipe:
    """What `make` needs to reproduce the shipped objects."""

    srctree: Path
    cc: str
    release: str
    user: str
    host: str
    timestamp: str

    @property
    def objtree(self) -> Path:
        return self.srctree / O_DIR

    def make_args(self) -> list[str]:
        return ["make", f"-j{os.cpu_count() or 2}", f"O={O_DIR}", f"CC={self.cc}",
                f"KBUILD_BUILD_USER={self.user}", f"KBUILD_BUILD_HOST={self.host}",
                f"KERNELRELEASE={self.release}", f"KBUILD_BUILD_VERSION_TIMESTAMP={self.timestamp}"]


def recipe(vmlinux: Path, version: str) -> Recipe:
    """Read compiler, user, host and timestamp from the shipped image's linux_banner."""
    index = SymbolIndex.open(vmlinux)
    sym = index.first("linux_banner")
    raw = bytes(index.code(sym)) if sym else b""
    m = _BANNER.search(raw)
    if not m:
        raise ToolError(f"{vmlinux}: no parsable linux_banner")
    upstream = version.split("-")[0]
    release, user, host, cc, stamp = (g.decode() for g in m.groups())
    return Recipe(BUILD_ROOT / f"linux-{upstream}", cc, release, user, host, stamp)


def prepare(r: Recipe, tarball: Path, config: Path) -> None:
    """Unpack the source at Debian's path and run olddefconfig + prepare once."""
    if not (r.srctree / "Makefile").exists():
        r.srctree.parent.mkdir(parents=True, exist_ok=True)
        _run(["tar", "-xf", str(tarball), "-C", str(r.srctree.parent)], r.srctree.parent)
        unpacked = next(p for p in r.srctree.parent.glob("linux-source-*") if p.is_dir())
        unpacked.rename(r.srctree)
    marker = r.objtree / ".kgenv-prepared"
    if marker.exists():
        return
    r.objtree.mkdir(parents=True, exist_ok=True)
    shutil.copy(config, r.objtree / ".config")
    _run(r.make_args() + ["olddefconfig"], r.srctree)
    _run(r.make_args() + ["prepare"], r.srctree)
    marker.touch()


def build(r: Recipe, objects: list[str]) -> dict[str, Path]:
    """Build objects like 'fs/proc/cmdline.o' in the prepared tree."""
    _run(r.make_args() + objects, r.srctree)
    return {o: r.objtree / o for o in objects}


def _run(cmd: list[str], cwd: Path) -> None:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
        raise ToolError(f"{' '.join(cmd[:3])}... failed in {cwd}: {tail[0]}")
