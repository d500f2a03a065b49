"""Build an out-of-tree module (a livepatch module, a sample) with Kbuild inside an env image."""

import shlex
import shutil
from pathlib import Path

from kgenv.errors import ToolError, UserError
from kgenv.fsutil import copy_regular
from kgenv.image.tree import make_command
from kgenv.manifest import Manifest
from kgenv.runtime.base import Mount, Runtime

SRC = "/kgenv-module"
OVERLAY = "/kgenv-overlay"


def build_module(
    rt: Runtime,
    m: Manifest,
    src: Path,
    outdir: Path,
    *,
    allow_undefined: bool = False,
    overlay: Path | None = None,
    progress=None,
) -> Path:
    """Run `make M=... modules` against the env's prepared tree and Module.symvers; return the .ko.

    src holds the module's C files and its Kbuild file; it is copied so the build never
    writes into the caller's sources. `overlay` (patched files, relative paths) is copied over the
    tree of this throwaway container first, as for the compile of the patched units.
    """
    if not (src / "Kbuild").is_file() and not (src / "Makefile").is_file():
        raise UserError(f"{src}: no Kbuild or Makefile")
    work = outdir / "kbuild"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src, work, symlinks=False)
    cmd = make_command(m.make, m.kernel.objtree, f"M={SRC}", "modules")
    if allow_undefined:
        cmd.append("KBUILD_MODPOST_WARN=1")  # let the kernel's loader, not modpost, refuse it
    if progress:
        progress.step(f"kbuild {src.name} in {m.image.id[7:19]}")
    mounts = [Mount(work.resolve(), SRC, read_only=False)]
    script = shlex.join(cmd) + " 2>&1"
    if overlay:
        mounts.append(Mount(overlay.resolve(), OVERLAY))
        script = f"set -e; cp -a {OVERLAY}/. .; {script}"
    r = rt.run(
        m.image.id,
        ["bash", "-c", script],
        mounts,
        workdir=m.kernel.srctree,
        progress=progress,
    )
    kos = sorted(work.glob("*.ko"))
    if r.exit_code or len(kos) != 1:
        raise ToolError(f"module build of {src} failed in env {m.name}:\n{r.output[-2000:]}")
    dest = outdir / kos[0].name
    copy_regular(kos[0], dest, root=work)  # the build ran as root in the container: never follow what it left
    return dest
