"""Build kernel modules for the boot tests against a shipped kernel's headers, on the host.

Swappable: once the env image builds modules, only build_module() needs to change.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from kgenv.distro.archive import Archive, extract_deb
from kgenv.fsutil import cache_dir


def _compiler(headers: Path) -> str:
    """The compiler the kernel was built with, by name (CONFIG_CC_VERSION_TEXT="gcc-12 (...)")."""
    m = re.search(r'^CONFIG_CC_VERSION_TEXT="(\S+)', (headers / ".config").read_text(), re.M)
    return m.group(1) if m else "gcc"


def _common_dir(kernel) -> Path:
    """The -common headers the arch headers' Makefile includes by absolute path."""
    include = (kernel.headers_dir / "Makefile").read_text().split()[-1]
    name = Path(include).parent.name
    for cand in [kernel.headers_dir.parent / name, *Path(kernel.root).glob(f"*/usr/src/{name}")]:
        if (cand / "Makefile").is_file():
            return cand
    raise FileNotFoundError(f"{name} not found next to {kernel.headers_dir}")


def _kbuild(kernel, series_dir: str) -> Path:
    """linux-kbuild-<series> (scripts, tools) of the kernel's version, fetched once into the cache."""
    name = series_dir.removeprefix("linux-kbuild-")
    dest = cache_dir() / "boot-kbuild" / f"linux-kbuild-{name}_{kernel.version}"
    if not (dest / ".kgenv-extracted").exists():
        archive = Archive(kernel.packages.line)
        extract_deb(archive.download(archive.get(f"linux-kbuild-{name}", kernel.version)), dest)
    return dest / "usr" / "lib" / series_dir


def _shadow(real: Path, dest: Path, kbuild: Path) -> Path:
    """A real directory whose entries link to `real`, with scripts/tools pointing at kbuild."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in real.iterdir():
        link = dest / entry.name
        if link.is_symlink() or link.exists():
            continue
        target = kbuild / entry.name if entry.name in ("scripts", "tools") else entry
        link.symlink_to(target)
    return dest


def kbuild_tree(kernel, dest: Path) -> tuple[Path, Path]:
    """(arch headers dir, common Makefile) in a private tree where every symlink resolves."""
    headers, common = kernel.headers_dir, _common_dir(kernel)
    if (headers / "scripts" / "Makefile.build").exists():
        return headers, common / "Makefile"   # already a complete tree
    series_dir = Path(str((headers / "scripts").readlink())).parent.name   # linux-kbuild-6.1
    kbuild = _kbuild(kernel, series_dir)
    src = dest / "usr" / "src"
    h = _shadow(headers, src / headers.name, kbuild)
    c = _shadow(common, src / common.name, kbuild)
    return h, c / "Makefile"


def build_module(kernel, sources: list[Path], dest: Path, *, allow_undefined: bool = False) -> Path:
    """Build one module from C sources (named after the first) and return the .ko path."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in sources:
        shutil.copy(src, dest / src.name)
    name = sources[0].stem
    objs = " ".join(f"{s.stem}.o" for s in sources)
    kbuild = f"obj-m := {name}.o\n" if len(sources) == 1 else f"obj-m := {name}-mod.o\n{name}-mod-y := {objs}\n"
    (dest / "Kbuild").write_text(kbuild)
    headers, makefile = kbuild_tree(kernel, dest.parent / f"{dest.name}-headers")
    cmd = ["make", "-C", str(headers), "-f", str(makefile), f"M={dest}",
           f"CC={_compiler(headers)}", "modules"]
    if allow_undefined:
        cmd.append("KBUILD_MODPOST_WARN=1")   # keep modpost from refusing: the loader must
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"module build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    ko = next(dest.glob("*.ko"))
    return ko


def livepatch_sample(kernel, dest: Path) -> Path:
    """The kernel's own samples/livepatch/livepatch-sample.c, from the unpacked tree or the tarball."""
    member = "samples/livepatch/livepatch-sample.c"
    series = kernel.packages.source.name.removeprefix("linux-source-")
    unpacked = Path(kernel.root) / "src"
    if (unpacked / ".kgenv-extracted").exists():
        return unpacked / f"linux-source-{series}" / member
    # Only one small file is needed: do not unpack the whole tree for it.
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xf", str(kernel.source_tarball), "-C", str(dest),
                    f"linux-source-{series}/{member}"], check=True)
    return dest / f"linux-source-{series}" / member
