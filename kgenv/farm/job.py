"""A farm job (one kernel × one fix): its cache key, its kgenv build command line, and its outcome."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from kgenv.build import report as build_report
from kgenv.errors import UserError
from kgenv.farm.plan import Fix
from kgenv.fsutil import sha256_file

# Outcomes a job can end in; only the first two are verdicts worth caching.
BUILT, REFUSED, BOOT_FAILED, ERROR, NOT_RUN = "built", "refused", "boot-failed", "error", "not-run"
CACHEABLE = (BUILT, REFUSED)
REPORT = "report.json"
LOG = "build.log"


@dataclass(frozen=True)
class Job:
    kernel: str  # env name
    image_id: str  # the env image the build runs in
    release: str
    fix: Fix
    boot_test: bool
    kgenv: str  # kgenv_identity() of the builder

    @property
    def id(self) -> str:
        return f"{self.kernel}/{self.fix.name}"

    def key_inputs(self) -> dict:
        return {
            "image_id": self.image_id,
            "diff_sha256": self.fix.diff_sha256,
            "check_sha256": self.fix.check_sha256 if self.boot_test else "",
            "kgenv": self.kgenv,
            "boot_test": self.boot_test,
            "name": self.fix.name,
            "tus": list(self.fix.tus),
        }

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.key_inputs(), sort_keys=True).encode()).hexdigest()

    def build_args(self, diff: str, check: str | None, outdir: str, cores: int = 1) -> list[str]:
        """The `kgenv build` arguments (after the program), with files named as the runner sees them."""
        args = [
            "build",
            diff,
            "--env",
            self.kernel,
            "--image",
            self.image_id,
            "-o",
            outdir,
            "--name",
            self.fix.name,
            "-j",
            str(cores),
        ]
        for tu in self.fix.tus:
            args += ["--tu", tu]
        if self.boot_test:
            args.append("--boot-test")
            if check:
                args += ["--check", check]
        return args


@dataclass(frozen=True)
class Outcome:
    """What one run of a job came to, read from its report.json and exit code."""

    outcome: str
    reason: str
    exit_code: int
    module: str = ""
    module_sha256: str = ""

    @property
    def cacheable(self) -> bool:
        return self.outcome in CACHEABLE


def read_outcome(outdir: Path, exit_code: int, log: Path | None = None) -> Outcome:
    """Classify a finished run; a missing or inconsistent report is an error naming why."""
    if not (outdir / REPORT).is_file():
        return Outcome(ERROR, f"no report.json; exit {exit_code}{_last_line(log)}", exit_code)
    try:
        report = build_report.load(outdir / REPORT)
    except UserError as e:
        return Outcome(ERROR, f"unreadable report.json ({e}); exit {exit_code}{_last_line(log)}", exit_code)
    outcome, reason = report.result.outcome, report.result.reason
    # kgenv build names the module by the path it wrote; the run's files may have moved since.
    module, sha = Path(report.result.module).name, report.result.module_sha256
    if report.boot is not None and report.boot.result == "fail":
        return Outcome(BOOT_FAILED, report.boot.reason or reason or "boot test failed", exit_code)
    want = {BUILT: 0, REFUSED: 1, ERROR: 2}[outcome]  # load() accepts no other outcome
    if want != exit_code:
        return Outcome(ERROR, f"report.json says {outcome} but kgenv build exited {exit_code}", exit_code)
    if outcome == BUILT and not (module and (outdir / module).is_file()):
        return Outcome(ERROR, f"report.json names module {module!r}, which is not there", exit_code)
    if outcome == BUILT and sha256_file(outdir / module) != sha:
        return Outcome(ERROR, f"{module}: sha256 differs from report.json", exit_code)
    return Outcome(outcome, reason, exit_code, module, sha)


def _last_line(log: Path | None) -> str:
    if not log or not log.exists():
        return ""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return f": {lines[-1][:200]}" if lines else ""
