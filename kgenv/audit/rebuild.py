"""Rebuild chosen TUs with the candidate in one run; a TU that fails is recorded, not fatal."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..image.tree import make_command
from ..manifest import Manifest
from .records import Candidate


@dataclass(frozen=True)
class Built:
    tu: str
    object: Path | None
    error: str = ""


def script(m: Manifest, cand: Candidate, tus: list[str], jobs: int) -> str:
    """make -k for all TUs at once (one container, one Kbuild prepare), then copy each .o out."""
    obj = shlex.quote(m.kernel.objtree or ".")
    make = {**m.make, **cand.make}
    lines = ["set -o pipefail"]
    # a stale object from the tree would pass for a rebuilt one
    lines += [f"rm -f {obj}/{shlex.quote(t)}" for t in tus]
    cmd = make_command(make, m.kernel.objtree, *tus, jobs=jobs)
    cmd.insert(1, "-k")  # keep going: one TU the candidate cannot build must not hide the others
    lines.append(shlex.join(cmd) + ' > "$KGENV_OUT"/.make.log 2>&1; echo MAKE_EXIT=$?; tail -n 300 "$KGENV_OUT"/.make.log')
    for t in tus:
        q = shlex.quote(t)
        lines.append(f'if [ -f {obj}/{q} ]; then mkdir -p "$KGENV_OUT"/{shlex.quote(str(PurePosixPath(t).parent))}'
                     f' && cp {obj}/{q} "$KGENV_OUT"/{q} && echo BUILT={q}; fi')
    return "\n".join(lines)


def rebuild(runner, m: Manifest, cand: Candidate, tus: list[str], outdir: Path, jobs: int | None = None,
            progress=None) -> list[Built]:
    """One Built per TU, in the given order."""
    outdir.mkdir(parents=True, exist_ok=True)
    if progress:
        progress.step(f"rebuild {len(tus)} TU(s) with {cand.label}")
    r = runner.run(script(m, cand, tus, jobs or os.cpu_count() or 1), outdir, progress)
    built = {line.split("=", 1)[1] for line in r.output.splitlines() if line.startswith("BUILT=")}
    return [Built(t, outdir / t) if t in built else Built(t, None, _error_for(t, r.output))
            for t in tus]


def _error_for(tu: str, output: str) -> str:
    """The compiler/make lines about this TU, else the end of the log."""
    src = tu[:-2]
    lines = [ln for ln in output.splitlines()
             if re.search(rf"(?:^|[\s/\[]){re.escape(src)}\.[co]\b", ln) and ("rror" in ln or "***" in ln)]
    return "\n".join(lines[:12]) or "\n".join(output.splitlines()[-12:]) or "no object produced"
