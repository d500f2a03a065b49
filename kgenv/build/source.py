"""Generate a TU's livepatch source: cfacts in a throwaway env container, then gensrc on the host."""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from kgenv.build import gensrc
from kgenv.errors import ToolError, UserError
from kgenv.fsutil import read_regular
from kgenv.manifest import Manifest
from kgenv.runtime.base import Mount, Runtime

PY = "/kgenv-py"  # PYTHONPATH in the container: the clang bindings and kgenv
IN, OUT, OVERLAY = "/kgenv-in", "/kgenv-out", "/kgenv-overlay"


def clang_package() -> Path:
    """The installed `clang` package (bindings + bundled libclang.so) to lend the container."""
    try:
        import clang.cindex
    except ImportError:
        raise ToolError("the libclang wheel is not installed (pip install libclang)") from None
    return Path(clang.cindex.__file__).resolve().parent


def _kgenv_package() -> Path:
    return Path(__file__).resolve().parents[1]


def _script(m: Manifest, tu_source: str, overlay: bool) -> str:
    src = f"{m.kernel.srctree}/{tu_source}"
    run = (
        f"python3 -m kgenv.build.cfacts --cmd {IN}/tu.cmd --cwd {shlex.quote(m.kernel.objtree or '.')} "
        f"--source {shlex.quote(src)}"
    )
    steps = ["set -e", f"{run} --out {OUT}/original.json"]
    if overlay:
        steps += [f"cp -a {OVERLAY}/. .", f"{run} --out {OUT}/patched.json"]
    steps.append(f"cp {shlex.quote(src)} {OUT}/patched.c")
    return "\n".join(steps)


def read_facts(
    rt: Runtime, m: Manifest, tu_source: str, overlay: Path | None, cmd_file: Path, workdir: Path, progress=None
) -> tuple[dict, dict, bytes]:
    """(original facts, patched facts, patched text) of one TU, parsed in the env image."""
    p = PurePosixPath(tu_source)
    if p.is_absolute() or ".." in p.parts or p.suffix != ".c":
        raise UserError(f"{tu_source}: not a C source path inside the kernel tree")
    if not cmd_file.is_file():
        raise ToolError(f"{cmd_file}: no Kbuild .cmd file for {tu_source} (compile the TU first)")
    inp, out = workdir / "cfacts-in", workdir / "cfacts-out"
    for d in (inp, out):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    shutil.copyfile(cmd_file, inp / "tu.cmd")
    mounts = [
        Mount(clang_package(), f"{PY}/clang"),
        Mount(_kgenv_package(), f"{PY}/kgenv"),
        Mount(inp.resolve(), IN),
        Mount(out.resolve(), OUT, read_only=False),
    ]
    if overlay:
        mounts.append(Mount(overlay.resolve(), OVERLAY))
    if progress:
        progress.step(f"read the declarations of {tu_source} with libclang")
    r = rt.run(
        m.image.id,
        ["bash", "-c", _script(m, tu_source, overlay is not None)],
        mounts,
        env={"PYTHONPATH": PY, "PYTHONDONTWRITEBYTECODE": "1"},
        workdir=m.kernel.srctree,
        progress=progress,
    )
    if r.exit_code:
        raise ToolError(f"reading {tu_source} with libclang failed in env {m.name}:\n{r.output[-1500:]}")
    # the container wrote these (with the patched tree in place): regular files only, never a symlink
    original = json.loads(read_regular(out / "original.json", root=out))
    patched = json.loads(read_regular(out / "patched.json", root=out)) if overlay else original
    return original, patched, read_regular(out / "patched.c", root=out)


def generate_source(
    rt: Runtime,
    m: Manifest,
    tu_source: str,
    overlay: Path | None,
    cmd_file: Path,
    keep: set[str],
    present: Callable[[str, str], bool],
    workdir: Path,
    progress=None,
    context: gensrc.Context | None = None,
    alias_prefix: str = gensrc.ALIAS_PREFIX,
) -> gensrc.Generated:
    """The reviewable livepatch C of `tu_source` (patched by `overlay`) replacing the functions in keep.

    The facts JSON and the generated text are left in workdir (for --keep-tmp); the result carries
    the patched facts too. Refusals are returned, not raised: the caller decides.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    original, patched, text = read_facts(rt, m, tu_source, overlay, cmd_file, workdir, progress)
    g = gensrc.generate(text, patched, keep, present, original=original, context=context, alias_prefix=alias_prefix)
    # the tree's own bytes back as they were (gensrc decodes with surrogateescape; not all of it is UTF-8)
    (workdir / PurePosixPath(tu_source).name).write_bytes(g.text.encode(errors="surrogateescape"))
    (workdir / "generated.json").write_text(json.dumps(g.to_dict(), indent=1))
    return g
