"""The audit stage: does a candidate toolchain reproduce a shipped kernel? Fingerprint diff plus rebuilt evidence."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from kgenv.audit import candidate as candidates
from kgenv.audit import probe, rebuild, sample
from kgenv.audit.evidence import tu_evidence
from kgenv.audit.records import AuditReport
from kgenv.build.target import VMLINUX, Target, find, shipped_modules
from kgenv.errors import ToolError
from kgenv.manifest import Manifest
from kgenv.progress import QUIET
from kgenv.runtime.base import Runtime
from kgenv.verify import open_binary

DEFAULT_SAMPLE = 20

__all__ = ["audit", "AuditReport", "DEFAULT_SAMPLE", "OBJECTS"]
OBJECTS = sample.OBJECTS


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
    objects: str = sample.ALL,
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
        chosen, info, pop = _choose(m, vmlinux, runner, tus, sample_n, seed, objects, progress)
        timings["sample_s"] = time.monotonic() - t
        t = time.monotonic()
        built = rebuild.rebuild(runner, m, cand, chosen, work / "objects", jobs, progress)
        timings["compile_s"] = time.monotonic() - t
        if not any(b.object for b in built) and cand.kind == "env":
            raise ToolError(f"{m.name}: the env image rebuilt none of the TUs:\n{built[0].error[-1500:]}")
        t = time.monotonic()
        binaries: dict[Path, object] = {}
        results, diffs, rows = [], [], []
        for i, b in enumerate(built, 1):
            target = _target(m, b, pop)
            progress.step(f"verify {i}/{len(built)} {b.tu} against {target.objname if target else '?'}")
            if target is None:
                r, d, rw = tu_evidence(b, None)
            else:
                if target.binary_path not in binaries:
                    binaries[target.binary_path] = open_binary(target.binary_path)
                r, d, rw = tu_evidence(b, binaries[target.binary_path])
            obj = target.objname if target else pop.object_of(b.tu) if pop else ""
            results.append(replace(r, object=obj))
            diffs += [replace(x, object=obj) for x in d]
            rows += rw
        if pop is None:  # named TUs: how many of them turned out to be module code
            info["sampled_modules"] = sum(r.is_module for r in results)
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


def _target(m: Manifest, b: rebuild.Built, pop: sample.Population | None) -> Target | None:
    """The shipped object to verify a rebuilt TU against: the module its compile command names
    (Kbuild's -DKBUILD_MODNAME), else what the sample drew it from, else vmlinux."""
    if b.object is None:
        return None
    if b.cmd is not None:
        return find(m, b.cmd)
    obj = pop.object_of(b.tu) if pop else ""
    if obj and obj != VMLINUX:
        return find_module(m, obj)
    return Target(VMLINUX, Path(_vmlinux(m)))


def find_module(m: Manifest, name: str) -> Target:
    ko = shipped_modules(m).get(name)
    if ko is None:
        raise ToolError(f"module {name} is not among the modules shipped with {m.kernel.release}")
    return Target(name, ko)


def _choose(
    m, vmlinux, runner, tus, sample_n, seed, objects, progress
) -> tuple[list[str], dict, sample.Population | None]:
    if tus:
        chosen = list(dict.fromkeys(sample.tu_of(t) for t in tus))
        keys = ("population", "objects", "population_vmlinux", "population_modules", "modules", "note")
        return chosen, {"mode": "named", "requested": len(chosen), "seed": "", **dict.fromkeys(keys, "")}, None
    progress.step(
        f"sample {sample_n} TUs of {objects if objects != sample.ALL else 'vmlinux and modules'} (seed {seed})"
    )
    pop = sample.units(vmlinux, m, runner, objects, progress)
    chosen = sample.choose_units(pop, sample_n, seed, objects)
    info = {"mode": "sample", "requested": sample_n, "seed": seed, **pop.info(objects)}
    info["sampled_modules"] = sum(pop.object_of(t) not in ("", VMLINUX) for t in chosen)
    return chosen, info, pop
