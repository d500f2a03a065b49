"""Compile translation units inside an env image with the kernel's recorded make line."""

import shlex
import shutil
from pathlib import Path, PurePosixPath

from kgenv.errors import ToolError, UserError
from kgenv.fsutil import copy_regular
from kgenv.image.tree import make_command
from kgenv.manifest import Manifest
from kgenv.runtime.base import Mount, Runtime

OUT = "/kgenv-out"
OVERLAY = "/kgenv-overlay"
STAGE = ".kgenv-container"  # the container's output mount inside outdir; emptied into outdir, then removed


def _checked(tu: str) -> str:
    p = PurePosixPath(tu)
    if p.is_absolute() or ".." in p.parts or p.suffix != ".o":
        raise UserError(f"{tu}: not a translation unit path like fs/proc/cmdline.o")
    return str(p)


def cmd_file(tu: str) -> str:
    """Kbuild's record of the exact command that built a TU: dir/.name.o.cmd."""
    p = PurePosixPath(tu)
    return str(p.parent / f".{p.name}.cmd")


def _copy_out(obj: str, tu: str) -> str:
    """Copy the .o and its .cmd file (the flags later stages reuse) to the output mount."""
    d, o, c = (shlex.quote(x) for x in (str(PurePosixPath(tu).parent), tu, cmd_file(tu)))
    return f"mkdir -p {OUT}/{d} && cp {shlex.quote(obj)}/{o} {OUT}/{o} && cp {shlex.quote(obj)}/{c} {OUT}/{c}"


def compile_tus(
    rt: Runtime,
    m: Manifest,
    tus: list[str],
    outdir: Path,
    *,
    overlay: Path | None = None,
    extra_cflags: str = "",
    image: str | None = None,
    make_overrides: dict | None = None,
    progress=None,
) -> dict[str, Path]:
    """Build each TU's .o in a throwaway container (no network) and copy it to outdir.

    The container writes into a staging dir only; each expected .o and .cmd is then copied out as
    a regular file (never through a symlink the container planted: it runs a diff's code as root).

    `overlay` holds patched source files (relative paths) copied over the tree first;
    the image itself is never modified. `extra_cflags` is appended to the recorded KCFLAGS.
    `image` and `make_overrides` (e.g. CC=gcc-11) are for comparisons with another toolchain.
    """
    tus = [_checked(t) for t in tus]
    outdir.mkdir(parents=True, exist_ok=True)
    make = {**m.make, **(make_overrides or {})}
    if extra_cflags:
        make["KCFLAGS"] = f"{make.get('KCFLAGS', '')} {extra_cflags}".strip()
    obj = m.kernel.objtree or "."
    steps = ["set -eo pipefail"]
    stage = outdir / STAGE
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    mounts = [Mount(stage.resolve(), OUT, read_only=False)]
    if overlay:
        mounts.append(Mount(overlay.resolve(), OVERLAY))
        steps.append(f"cp -a {OVERLAY}/. .")
    steps.append(shlex.join(make_command(make, m.kernel.objtree, *tus)) + " 2>&1 | tail -n 40")
    steps += [_copy_out(obj, t) for t in tus]
    if progress:
        progress.step(f"compile {len(tus)} unit(s) in {(image or m.image.id)[7:19]}")
    r = rt.run(
        image or m.image.id, ["bash", "-c", "\n".join(steps)], mounts, workdir=m.kernel.srctree, progress=progress
    )
    try:
        if r.exit_code:
            raise ToolError(f"compile of {', '.join(tus)} failed in env {m.name}:\n{r.output[-2000:]}")
        for t in tus:
            for rel in (t, cmd_file(t)):
                copy_regular(stage / rel, outdir / rel, root=stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {t: outdir / t for t in tus}
