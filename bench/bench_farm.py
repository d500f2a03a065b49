"""Benchmark the farm's cache: re-running an all-cached plan of N jobs with `kgenv farm run`.

    python bench/bench_farm.py [--plan PLAN.toml] [--jobs 20] [--runs 5] [--json]

With --plan, that plan is run once (filling the cache with real kgenv builds if needed) and the
re-runs are timed. Without it, a plan of --jobs tiny C jobs on the recorded env is made and filled
with tests/farm_tinyjob.py (a cache hit does not care which program made the result).
The bar: a re-run of an all-cached plan of 20 jobs takes at most 5 s (the whole CLI process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BAR_SECONDS = 5.0


def synthetic_plan(d: Path, jobs: int) -> Path:
    """`jobs` fixes on the first recorded env, filled by the tiny job through the farm's own API."""
    sys.path.insert(0, str(REPO / "tests"))
    from farm_helpers import tiny_engine, write_plan  # noqa: E402 (test helper, not a package)

    from kgenv import manifest
    from kgenv.farm import plan as plans
    from kgenv.farm.run import Farm
    from kgenv.farm.store import Store
    from kgenv.runtime.docker import runtime

    env = manifest.names()[0]
    fixes = {f"fix{i:02d}": (f"int fix{i}(int x) {{ return x + {i}; }}\n", "built") for i in range(jobs)}
    path = write_plan(d, [env], fixes)
    rt = runtime()
    Farm(plans.load(path), d / "out", tiny_engine(2), Store(d / "cache"), rt).run()
    return path


def run_cli(plan: Path, out: Path, cache: Path) -> tuple[float, dict]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "kgenv", "farm", "run", str(plan), "-o", str(out), "--cache-dir", str(cache), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "CI": "true"},
    )
    wall = time.monotonic() - t0
    if r.returncode not in (0, 1):
        raise SystemExit(f"kgenv farm run failed ({r.returncode}): {r.stderr[-600:]}")
    return wall, json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", type=Path)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kgenv-bench-farm.") as tmp:
        d = Path(tmp)
        cache = d / "cache"
        if a.plan:
            plan = a.plan.resolve()
            first, _ = run_cli(plan, d / "out", cache)
            print(f"first run (fills the cache): {first:.1f} s", file=sys.stderr)
        else:
            plan = synthetic_plan(d, a.jobs)
        times, doc = [], {}
        for _ in range(a.runs):
            wall, doc = run_cli(plan, d / "out", cache)
            times.append(wall)
        farm = doc["farm"]
        if farm["count_cached"] != farm["count_jobs"]:
            raise SystemExit(f"not all cached: {farm['count_cached']}/{farm['count_jobs']}")
        result = {
            "jobs": farm["count_jobs"],
            "runs": a.runs,
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
            "bar_s": BAR_SECONDS,
            "per_job_ms": round(1000 * statistics.median(times) / farm["count_jobs"], 1),
        }
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"re-run of {result['jobs']} cached jobs: median {result['median_s']} s, max {result['max_s']} s "
            f"over {a.runs} runs (bar {BAR_SECONDS} s)"
        )
    sys.exit(0 if result["max_s"] <= BAR_SECONDS else 1)


if __name__ == "__main__":
    main()
