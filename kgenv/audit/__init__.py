"""The audit stage: does a candidate toolchain reproduce a shipped kernel? Fingerprint diff plus rebuilt evidence."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from kgenv.audit import candidate as candidates
from kgenv.audit import probe, rebuild, sample
from kgenv.audit.evidence import tu_evidence
from kgenv.audit.records import AuditReport
from kgenv.errors import ToolError
from kgenv.manifest import Manifest
from kgenv.progress import QUIET
from kgenv.runtime.base import Runtime
from kgenv.verify import open_binary

DEFAULT_SAMPLE = 20

__all__ = ["audit", "AuditReport", "DEFAULT_SAMPLE"]


def _vmlinux(m: Manifest) -> str:
    return str(m.file("vmlinux"))


def audit(
    rt: Runtime,
    m: Manifest,
    toolchain: str | None = None,
    cc: str | None = None,
    tus: list[str] | None = None,
    sample_n: int = DEFAULT_SAMPLE,
    seed: int = 0,
    jobs: int | None = None,
    progress=QUIET,
    keep_tmp: bool = False,
) -> AuditReport:
    """Compare candidate toolchain with env `m`: fingerprint items, then every function of the chosen TUs."""
    t0 = time.monotonic()
    vmlinux = _vmlinux(m)
    cand, runner = candidates.resolve(rt, m, toolchain, cc, progress, keep_tmp)
    work = Path(tempfile.mkdtemp(prefix=f"kgenv-audit-{m.name}."))
    try:
        timings = {"candidate_s": time.monotonic() - t0}
        progress.step(f"probe {cand.label}")
        t = time.monotonic()
        findings = probe.findings(m, cand, runner.run(probe.script(m, cand)).output)
        timings["probe_s"] = time.monotonic() - t
        t = time.monotonic()
        chosen, info = _choose(m, vmlinux, runner, tus, sample_n, seed, progress)
        timings["sample_s"] = time.monotonic() - t
        t = time.monotonic()
        built = rebuild.rebuild(runner, m, cand, chosen, work / "objects", jobs, progress)
        timings["compile_s"] = time.monotonic() - t
        if not any(b.object for b in built) and cand.kind == "env":
            raise ToolError(f"{m.name}: the env image rebuilt none of the TUs:\n{built[0].error[-1500:]}")
        t = time.monotonic()
        binary = open_binary(vmlinux)
        results, diffs, rows = [], [], []
        for i, b in enumerate(built, 1):
            progress.step(f"verify {i}/{len(built)} {b.tu}")
            r, d, rw = tu_evidence(b, binary)
            results.append(r)
            diffs += d
            rows += rw
        timings["verify_s"] = time.monotonic() - t
        timings["total_s"] = time.monotonic() - t0
        return AuditReport(
            m.name,
            m.kernel.release,
            cand,
            tuple(findings),
            tuple(results),
            tuple(diffs),
            tuple(rows),
            info,
            {k: round(v, 2) for k, v in timings.items()},
        )
    finally:
        runner.close()
        if keep_tmp:
            progress.step(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _choose(m, vmlinux, runner, tus, sample_n, seed, progress) -> tuple[list[str], dict]:
    if tus:
        chosen = list(dict.fromkeys(sample.tu_of(t) for t in tus))
        return chosen, {"mode": "named", "requested": len(chosen), "seed": "", "population": ""}
    progress.step(f"sample {sample_n} built-in TUs (seed {seed})")
    pop = sample.population(vmlinux, m, runner)
    return sample.choose(pop, sample_n, seed), {
        "mode": "sample",
        "requested": sample_n,
        "seed": seed,
        "population": len(pop),
    }
