"""Modules for the boot tests, built by Kbuild in the env image (as `kgenv build` does)."""

from __future__ import annotations

import shutil
from pathlib import Path

from kgenv.build.kbuild import build_module as kbuild_module


def build_module(env, rt, sources: list[Path], dest: Path, *, allow_undefined: bool = False) -> Path:
    """Build one module from C sources (named after the first) and return the .ko path."""
    src = dest / "src"
    src.mkdir(parents=True, exist_ok=True)
    for s in sources:
        shutil.copy(s, src / s.name)
    name = sources[0].stem
    objs = " ".join(f"{s.stem}.o" for s in sources)
    kbuild = f"obj-m := {name}.o\n" if len(sources) == 1 else f"obj-m := {name}-mod.o\n{name}-mod-y := {objs}\n"
    (src / "Kbuild").write_text(kbuild)
    return kbuild_module(rt, env, src, dest, allow_undefined=allow_undefined)
