"""Write a matrix to OUTDIR: matrix.json (two levels), JUnit XML and a self-contained HTML page."""

from __future__ import annotations

import json
from pathlib import Path

from ..fsutil import write_atomic
from .matrix import FILE, Matrix


def write(m: Matrix, outdir: Path) -> None:
    write_atomic(outdir / FILE, json.dumps(m.to_dict(), indent=1, sort_keys=True) + "\n")
