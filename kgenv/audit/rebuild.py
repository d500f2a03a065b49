"""Rebuild chosen TUs with the candidate in one run; a TU that fails is recorded, not fatal."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kgenv.audit.records import Candidate
from kgenv.build.compile import cmd_file
from kgenv.errors import ToolError
from kgenv.fsutil import open_regular
from kgenv.image.tree import make_command
from kgenv.manifest import Manifest


@dataclass(frozen=True)
class Built:
    tu: str
    object: Path | None
    error: str = ""
    cmd: Path | None = None  # Kbuild's .cmd record of the compile (it names the module, if any)


def script(m: Manifest, cand: Candidate, tus: list[str], jobs: int) -> str:
    """make -k for all TUs at once (one container, one Kbuild prepare), then copy each .o out."""
    obj = shlex.quote(m.kernel.objtree or ".")
    make = {**m.make, **cand.make}
    lines = ["set -o pipefail"]
    if make.get("HOSTCC") != m.make.get("HOSTCC"):
        # tools/ (objtool, resolve_btfids) has its own build whose .d files name the env compiler's
        # headers by absolute path; another host compiler finds them missing and stops: rebuild them.
        lines.append(f"rm -rf {obj}/tools")
    # a stale object from the tree would pass for a rebuilt one
    lines += [f"rm -f {obj}/{shlex.quote(t)}" for t in tus]
    cmd = make_command(make, m.kernel.objtree, *tus, jobs=jobs)
    cmd.insert(1, "-k")  # keep going: one TU the candidate cannot build must not hide the others
    lines.append(
        shlex.join(cmd) + ' > "$KGENV_OUT"/.make.log 2>&1; echo MAKE_EXIT=$?; tail -n 300 "$KGENV_OUT"/.make.log'
    )
    for t in tus:
        q, c = shlex.quote(t), shlex.quote(cmd_file(t))
        lines.append(
            f'if [ -f {obj}/{q} ]; then mkdir -p "$KGENV_OUT"/{shlex.quote(str(PurePosixPath(t).parent))}'
            f' && cp {obj}/{q} "$KGENV_OUT"/{q} && echo BUILT={q}'
            f' && if [ -f {obj}/{c} ]; then cp {obj}/{c} "$KGENV_OUT"/{c}; fi; fi'
        )
    return "\n".join(lines)


def rebuild(
    runner, m: Manifest, cand: Candidate, tus: list[str], outdir: Path, jobs: int | None = None, progress=None
) -> list[Built]:
    """One Built per TU, in the given order."""
    outdir.mkdir(parents=True, exist_ok=True)
    if progress:
        progress.step(f"rebuild {len(tus)} TU(s) with {cand.label}")
    r = runner.run(script(m, cand, tus, jobs or os.cpu_count() or 1), outdir, progress)
    built = {line.split("=", 1)[1] for line in r.output.splitlines() if line.startswith("BUILT=")}
    return [_built(t, outdir) if t in built else Built(t, None, error_for(t, r.output)) for t in tus]


def _built(tu: str, outdir: Path) -> Built:
    """A TU the container says it built: its object only as a regular file below outdir, never a
    symlink it planted (the candidate image may be anyone's)."""
    try:
        os.close(open_regular(outdir / tu, root=outdir))
    except (OSError, ToolError) as e:
        return Built(tu, None, f"the rebuilt object is not a regular file ({e})")
    cmd: Path | None = outdir / cmd_file(tu)
    try:
        os.close(open_regular(outdir / cmd_file(tu), root=outdir))
    except (OSError, ToolError):
        cmd = None  # absent or not a regular file: the object's home is then taken from the sample
    return Built(tu, outdir / tu, cmd=cmd)


def error_for(tu: str, output: str) -> str:
    """The compiler/make errors about this TU, else the build's first errors (a failure before any TU)."""
    src = re.escape(tu[:-2])
    log = [ln for ln in output.splitlines() if "not remade because of errors" not in ln]
    mine = [ln for ln in log if re.search(rf"(?:^|[\s/\[']){src}\.[co]\b", ln) and ("error" in ln or "***" in ln)]
    first = [ln for ln in log if " error: " in ln or "*** " in ln]
    return "\n".join((mine or first)[:12]) or "\n".join(log[-12:]) or "no object produced"
