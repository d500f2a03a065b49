"""`kgenv farm run`: every (kernel, fix) of a plan as a job — cached, run on an engine, assembled into a matrix."""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from kgenv.farm import kernels, outputs, provenance
from kgenv.farm.engine import Engine, Task, now_utc
from kgenv.farm.identity import kgenv_identity
from kgenv.farm.job import BUILT, LOG, NOT_RUN, REPORT, Job, Outcome, read_outcome
from kgenv.farm.matrix import Cell, FixRow, KernelRow, Matrix
from kgenv.farm.plan import Plan
from kgenv.farm.sign import SigningKey, sign
from kgenv.farm.store import ATTEMPT, Attempt, Store, place
from kgenv.manifest import Manifest
from kgenv.progress import QUIET, Progress
from kgenv.runtime.base import Runtime

JOB_FILE = "job.json"


@dataclass
class Farm:
    plan: Plan
    outdir: Path
    engine: Engine
    store: Store
    rt: Runtime  # the container runtime that holds the env images (snapshot, restore, signing)
    progress: Progress = QUIET
    signing: SigningKey | None = None
    use_cache: bool = True
    envs: list[Manifest] = field(default_factory=list, init=False)
    cells: dict[str, Cell] = field(default_factory=dict, init=False)

    def run(self) -> Matrix:
        """Run what is not cached; on Ctrl-C the finished jobs stay and the matrix says what did not run."""
        started, t0 = now_utc(), time.monotonic()
        self.envs = self._envs()
        jobs = self._jobs()
        self.cells = {}
        todo = []
        for job in jobs:
            if self.use_cache and self.store.has(job.key):
                self.cells[job.id] = self._place(job, self.store.path(job.key), True)
            else:
                todo.append(Task(job, self.store.workdir(job.key)))
        self.progress.step(
            f"{len(jobs)} jobs: {len(jobs) - len(todo)} cached, {len(todo)} to run on {self.engine.name}"
        )
        interrupted = False
        try:
            self.engine.execute(todo, self._finished, self.progress)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            for t in todo:
                self.store.discard(t.work)
        if self.signing and not interrupted:
            self._sign_all(jobs, self.signing)
        m = self._matrix(jobs, started, time.monotonic() - t0, interrupted)
        outputs.write(m, self.outdir)
        if interrupted:
            raise KeyboardInterrupt
        return m

    # -- jobs --------------------------------------------------------------------------------

    def _envs(self) -> list[Manifest]:
        return [
            kernels.ensure(name, spec, self.rt, self.progress)
            for name, spec in kernels.env_names(self.plan.kernels, self.progress)
        ]

    def _jobs(self) -> list[Job]:
        ident = kgenv_identity()
        return [
            Job(m.name, m.image.id, m.kernel.release, fix, self.plan.options.boot_test, ident)
            for m in self.envs
            for fix in self.plan.fixes
        ]

    def _finished(self, task: Task, attempt: Attempt) -> None:
        """One run ended: verdicts go into the store, failures straight into OUTDIR (to be redone)."""
        job, out = task.job, task.out
        out.mkdir(parents=True, exist_ok=True)
        if task.log.exists():
            task.log.replace(out / LOG)
        outcome = read_outcome(out, attempt.exit_code, out / LOG)
        if outcome.cacheable:
            if outcome.outcome == BUILT:
                st = provenance.statement(job, self._env(job), out, outcome.module, attempt)
                (out / provenance.FILE).write_text(json.dumps(st, indent=1, sort_keys=True) + "\n")
            entry = self.store.commit(job.key, out, attempt)
            _read_only(entry)
            cell = self._place(job, entry, False)
        else:
            (out / ATTEMPT).write_text(json.dumps(attempt.to_dict(), indent=1, sort_keys=True))
            cell = self._place(job, out, False, outcome)
        self.cells[job.id] = cell
        done = len(self.cells)
        note = "" if cell.as_expected else f" (expected {cell.expected})"
        self.progress.step(
            f"[{done}] {job.id}: {cell.outcome}{note} in {attempt.seconds:.1f}s "
            f"on {attempt.worker}" + (f": {cell.reason[:160]}" if cell.reason else "")
        )

    def _env(self, job: Job) -> Manifest:
        return next(m for m in self.envs if m.name == job.kernel)

    def _place(self, job: Job, src: Path, cached: bool, outcome: Outcome | None = None) -> Cell:
        attempt = Attempt(**json.loads((src / ATTEMPT).read_text()))
        outcome = outcome or read_outcome(src, attempt.exit_code, src / LOG)
        rel = f"jobs/{job.kernel}/{job.fix.name}"
        cell = _cell(job, outcome, attempt, cached, rel, src)
        record = {"job": {**cell.__dict__, "key_inputs": json.dumps(job.key_inputs(), sort_keys=True)}}
        place(src, self.outdir / rel, {JOB_FILE: json.dumps(record, indent=1, sort_keys=True).encode()})
        return cell

    def _sign_all(self, jobs: list[Job], key: SigningKey) -> None:
        for job in jobs:
            c = self.cells[job.id]
            if c.outcome != BUILT:
                continue
            module = self.outdir / c.dir / c.module
            dest = self.outdir / c.dir / "signed" / c.module
            self.progress.step(f"sign {job.id}")
            sha = sign(self.rt, self._env(job), module, dest, key)
            signature = {
                "signature": {
                    "module": c.module,
                    "module_sha256": c.module_sha256,
                    "signed_sha256": sha,
                    "hash": key.hash,
                    "cert_sha256": key.cert_sha256,
                }
            }
            (dest.parent / "signature.json").write_text(json.dumps(signature, indent=1, sort_keys=True))
            self.cells[job.id] = Cell(**{**c.__dict__, "signed": f"{c.dir}/signed/{c.module}"})

    # -- matrix ------------------------------------------------------------------------------

    def _matrix(self, jobs: list[Job], started: str, seconds: float, interrupted: bool) -> Matrix:
        cells = tuple(self.cells.get(j.id) or _not_run(j) for j in jobs)
        farm = {
            "plan": str(self.plan.path),
            "plan_sha256": self.plan.sha256,
            "engine": self.engine.name,
            "kgenv": kgenv_identity(),
            "boot_test": self.plan.options.boot_test,
            "started": started,
            "seconds": round(seconds, 3),
            "interrupted": interrupted,
            "signed_with_cert_sha256": self.signing.cert_sha256 if self.signing else "",
        }
        rows = tuple(KernelRow(m.name, m.kernel.release, m.image.id, m.kernel.build_id) for m in self.envs)
        return Matrix(
            farm,
            rows,
            tuple(FixRow(f.name, f.expected, str(f.diff), f.diff_sha256, f.check_sha256) for f in self.plan.fixes),
            cells,
        )


def _cell(job: Job, o: Outcome, a: Attempt, cached: bool, rel: str, src: Path) -> Cell:
    def has(name: str) -> str:
        return f"{rel}/{name}" if (src / name).exists() else ""

    return Cell(
        kernel=job.kernel,
        fix=job.fix.name,
        expected=job.fix.expected,
        outcome=o.outcome,
        as_expected=o.outcome == job.fix.expected,
        reason=o.reason,
        key=job.key,
        cached=cached,
        engine=a.engine,
        worker=a.worker,
        seconds=a.seconds,
        exit_code=o.exit_code,
        module=o.module,
        module_sha256=o.module_sha256,
        dir=rel,
        report=has(REPORT),
        log=has(LOG),
        provenance=has(provenance.FILE),
    )


def _not_run(job: Job) -> Cell:
    return Cell(
        job.kernel,
        job.fix.name,
        job.fix.expected,
        NOT_RUN,
        False,
        "interrupted before it finished",
        job.key,
        False,
        "",
        "",
        0.0,
        -1,
        "",
        "",
        "",
        "",
        "",
        "",
    )


def _read_only(entry: Path) -> None:
    """Store entries are shared by hard links with every OUTDIR: make accidental writes fail."""
    for f in entry.rglob("*"):
        if f.is_file():
            os.chmod(f, f.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
