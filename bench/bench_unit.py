"""Benchmark the fast tier, `scripts/test --unit`: ruff, mypy and the unit tests, as a fresh checkout runs them.

    python bench/bench_unit.py [--runs 3] [--pytest-only] [--warm] [--json]

Each run is a fresh `scripts/test --unit` process with empty ruff and mypy caches (--warm keeps
them), so the figure is what CI or a new clone pays. --pytest-only times just its pytest command
(`python3 -m pytest -m "not archive and not docker and not qemu"`). The wall time counts whether
the checks pass or fail (a failing lint or test still runs every step); the exit codes are printed
beside it. Bar: <= 180 s wall on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BAR_SECONDS = 180.0
UNIT = "not archive and not docker and not qemu"
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", UNIT]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pytest-only", action="store_true", help="time only the pytest part of --unit")
    ap.add_argument("--warm", action="store_true", help="keep the ruff and mypy caches between runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    cmd = PYTEST if args.pytest_only else [str(REPO / "scripts" / "test"), "--unit", "-q", "-p", "no:cacheprovider"]
    walls, codes = [], []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="kgenv-bench-unit-") as tmp:
            env = dict(os.environ)
            if not args.warm:
                env.update(MYPY_CACHE_DIR=f"{tmp}/mypy", RUFF_CACHE_DIR=f"{tmp}/ruff")
            t0 = time.monotonic()
            r = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            walls.append(time.monotonic() - t0)
            codes.append(r.returncode)
        tail = r.stdout.strip().splitlines()[-1:] or [""]
        if not args.json:
            print(f"run {i + 1}/{args.runs}: {walls[-1]:.1f} s, exit {r.returncode} ({tail[0]})", flush=True)

    summary = {
        "command": "scripts/test --unit" if not args.pytest_only else shlex.join(["python3", *PYTEST[1:]]),
        "caches": "n/a" if args.pytest_only else "warm" if args.warm else "cold",
        "runs": args.runs,
        "exit_codes": codes,
        "cpus_host": os.cpu_count(),
        "median_seconds": round(statistics.median(walls), 1),
        "max_seconds": round(max(walls), 1),
        "bar_seconds": BAR_SECONDS,
        "within_bar": max(walls) <= BAR_SECONDS,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['command']} ({summary['caches']} caches): median {summary['median_seconds']:.1f} s, "
            f"max {summary['max_seconds']:.1f} s (bar {BAR_SECONDS:.0f} s) over {args.runs} runs; "
            f"exit codes {codes}"
        )
    return 0 if summary["within_bar"] else 1


if __name__ == "__main__":
    sys.exit(main())
