"""The farm's central record: kernels × fixes, one cell per job; JSON two levels deep, loads back."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from kgenv.errors import UserError
from kgenv.farm.job import ERROR, NOT_RUN

FILE = "matrix.json"


@dataclass(frozen=True)
class KernelRow:
    env: str
    release: str
    image_id: str
    build_id: str


@dataclass(frozen=True)
class FixRow:
    name: str
    expected: str
    diff: str
    diff_sha256: str
    check_sha256: str


@dataclass(frozen=True)
class Cell:
    """One job's outcome; paths are relative to the plan's OUTDIR."""

    kernel: str
    fix: str
    expected: str
    outcome: str
    as_expected: bool
    reason: str
    key: str
    cached: bool
    engine: str
    worker: str
    seconds: float
    exit_code: int
    module: str
    module_sha256: str
    dir: str
    report: str
    log: str
    provenance: str
    signed: str = ""

    @property
    def id(self) -> str:
        return f"{self.kernel}/{self.fix}"


@dataclass(frozen=True)
class Matrix:
    farm: dict
    kernels: tuple[KernelRow, ...]
    fixes: tuple[FixRow, ...]
    cells: tuple[Cell, ...]

    @property
    def exit_code(self) -> int:
        """2 when a job could not come to a verdict (error, not run), 1 when a verdict was unexpected."""
        if any(c.outcome in (ERROR, NOT_RUN) for c in self.cells):
            return 2
        return 0 if all(c.as_expected for c in self.cells) else 1

    def cell(self, kernel: str, fix: str) -> Cell | None:
        return next((c for c in self.cells if c.kernel == kernel and c.fix == fix), None)

    def counts(self) -> dict[str, int]:
        out = {
            "jobs": len(self.cells),
            "as_expected": sum(c.as_expected for c in self.cells),
            "cached": sum(c.cached for c in self.cells),
        }
        for c in self.cells:
            out[c.outcome] = out.get(c.outcome, 0) + 1
        return out

    def to_dict(self) -> dict:
        """farm: scalars; kernels, fixes, jobs: lists of flat records."""
        return {
            "farm": {
                **self.farm,
                **{f"count_{k}": v for k, v in sorted(self.counts().items())},
                "exit_code": self.exit_code,
            },
            "kernels": [asdict(k) for k in self.kernels],
            "fixes": [asdict(f) for f in self.fixes],
            "jobs": [asdict(c) for c in self.cells],
        }


def load(path: Path) -> Matrix:
    try:
        d = json.loads(Path(path).read_text())
        return Matrix(
            {k: v for k, v in d["farm"].items() if not k.startswith("count_") and k != "exit_code"},
            tuple(_rec(KernelRow, r) for r in d["kernels"]),
            tuple(_rec(FixRow, r) for r in d["fixes"]),
            tuple(_rec(Cell, r) for r in d["jobs"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a kgenv farm matrix ({e})") from None


def _rec(cls, d: dict):
    return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
