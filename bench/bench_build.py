"""Benchmark `kgenv build` of a one-file fix against Debian's full config, after snapshot.

    python bench/bench_build.py [--env NAME] [--fix fixtures/patches/cmdline.diff] [--runs 3] [--json]

Each run is a fresh `kgenv build` process (container starts included); the env must exist (snapshot
first, e.g. `kgenv snapshot --debian bookworm`, or the tests' env in the cache). Bar: <= 60 s wall.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BAR_SECONDS = 60.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default=None, help="env name (default: the only env found)")
    ap.add_argument("--fix", type=Path, default=REPO / "fixtures" / "patches" / "cmdline.diff")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from kgenv import manifest
    from kgenv.build.report import BuildReport

    env = args.env or (manifest.names() or [None])[0]
    if env is None:
        print("no env: snapshot one first (kgenv snapshot --debian bookworm)", file=sys.stderr)
        return 2
    walls, stages = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.monotonic()
            r = subprocess.run(
                [sys.executable, "-m", "kgenv", "build", str(args.fix), "--env", env, "-o", out, "--json"],
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            walls.append(time.monotonic() - t0)
            if r.returncode != 0:
                print(r.stdout[-2000:], r.stderr[-2000:], file=sys.stderr)
                return 2
            stages.append(BuildReport.from_dict(json.loads(r.stdout), "kgenv build --json").stages)
    median = statistics.median(walls)
    result = {
        "env": env,
        "fix": args.fix.name,
        "runs": args.runs,
        "median_s": round(median, 2),
        "max_s": round(max(walls), 2),
        "bar_s": BAR_SECONDS,
        "ok": median <= BAR_SECONDS,
        "stages_median_s": {k: round(statistics.median(s[k] for s in stages), 2) for k in stages[0]},
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"kgenv build {args.fix.name} on {env}: median {median:.1f} s over {args.runs} runs "
            f"(max {max(walls):.1f} s; bar {BAR_SECONDS:.0f} s) — {'ok' if result['ok'] else 'TOO SLOW'}"
        )
        print("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in result["stages_median_s"].items()))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
