"""Compile translation units inside an env image with the kernel's recorded make line."""

import re
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
LOG = "/tmp/kgenv-make.log"  # inside the container
# a compiler diagnostic that stops the build: `file:line[:col]: [fatal ]error: message`
ERROR_LINE = re.compile(r"^(\S+?:\d+(?::\d+)?: (?:fatal )?error: .+)$", re.MULTILINE)
_ERROR_SHELL = r"^[^ ]+:[0-9]+(:[0-9]+)?: (fatal )?error: "


class CompileError(ToolError):
    """make failed; `first_error` is the compiler's first error line, "" when it printed none
    (a killed container, a make or objtool failure)."""

    def __init__(self, message: str, first_error: str = ""):
        super().__init__(message)
        self.first_error = first_error


def first_error(output: str, srctree: str = "") -> str:
    """The first `file:line: error:` line of a build's output, one printable line of at most 300
    characters, the file relative to the tree."""
    m = ERROR_LINE.search(output)
    if not m:
        return ""
    line = "".join(c if c.isprintable() else "?" for c in m.group(1))
    if srctree:
        line = line.removeprefix(srctree.rstrip("/") + "/")
    return line[:300]


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
    # the first error line before the log's tail: a fix with many errors would push it out of the tail
    steps.append(
        f"if {shlex.join(make_command(make, m.kernel.objtree, *tus))} >{LOG} 2>&1; then tail -n 40 {LOG}; "
        f"else grep -m1 -E {shlex.quote(_ERROR_SHELL)} {LOG}; tail -n 40 {LOG}; exit 1; fi"
    )
    steps += [_copy_out(obj, t) for t in tus]
    if progress:
        progress.step(f"compile {len(tus)} unit(s) in {(image or m.image.id)[7:19]}")
    r = rt.run(
        image or m.image.id, ["bash", "-c", "\n".join(steps)], mounts, workdir=m.kernel.srctree, progress=progress
    )
    try:
        if r.exit_code:
            raise CompileError(
                f"compile of {', '.join(tus)} failed in env {m.name}:\n{r.output[-2000:]}",
                first_error(r.output, m.kernel.srctree),
            )
        for t in tus:
            for rel in (t, cmd_file(t)):
                copy_regular(stage / rel, outdir / rel, root=stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {t: outdir / t for t in tus}
