"""The farm bar: one plan on the local engine and on a loopback Buildbot (a master, two workers),
each run twice; the matrices must agree and every second run must be all cache hits.

    python bench/farm_bar.py PLAN.toml WORKDIR [--jobs 2] [--json]

WORKDIR keeps each engine's store and OUTDIR, so an interrupted bar resumes where it stopped.
Typical plan: every Debian 6.1 ABI still in the archive × fixtures/patches, with boot proofs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def farm(plan: Path, out: Path, store: Path, *extra: str) -> tuple[float, dict]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "kgenv", "farm", "run", str(plan), "-o", str(out), "--cache-dir", str(store), *extra],
        env={**os.environ, "CI": "true"},
        stdout=subprocess.DEVNULL,
        stderr=sys.stderr,
    )
    wall = time.monotonic() - t0
    doc = json.loads((out / "matrix.json").read_text())
    if doc["farm"]["exit_code"] != r.returncode:
        raise SystemExit(f"exit {r.returncode} but matrix says {doc['farm']['exit_code']}")
    return wall, doc


def cells(doc: dict) -> dict[str, str]:
    return {f"{j['kernel']}/{j['fix']}": j["outcome"] for j in doc["jobs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan", type=Path)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--jobs", default="2")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from buildbot_cluster import Cluster  # noqa: E402 (test helper, not a package)

    w = a.workdir.resolve()
    runs = {}
    runs["local"] = farm(a.plan, w / "local-out", w / "local-store", "-j", a.jobs)
    runs["local-again"] = farm(a.plan, w / "local-out", w / "local-store", "-j", a.jobs)
    envs = os.environ.get("KGENV_ENVS", str(REPO / "envs"))
    cluster = Cluster(w / "buildbot", {"worker1": {"KGENV_ENVS": envs}, "worker2": {"KGENV_ENVS": envs}})
    (w / "buildbot").mkdir(parents=True, exist_ok=True)
    try:
        cluster.start()
        # Both workers share this host's envs: no env archives needed (tests/test_farm_buildbot.py covers those).
        master = ["--engine", "buildbot", "--master", cluster.url]
        runs["buildbot"] = farm(a.plan, w / "bb-out", w / "bb-store", *master)
        runs["buildbot-again"] = farm(a.plan, w / "bb-out", w / "bb-store", *master)
    finally:
        cluster.stop()
    local, bb = runs["local"][1], runs["buildbot"][1]
    result = {
        "kernels": len(local["kernels"]),
        "fixes": len(local["fixes"]),
        "jobs": local["farm"]["count_jobs"],
        "same_matrix": cells(local) == cells(bb),
        "workers": sorted({j["worker"] for j in bb["jobs"]}),
        **{f"{name}_s": round(wall, 1) for name, (wall, _) in runs.items()},
        **{f"{name}_cached": doc["farm"]["count_cached"] for name, (_, doc) in runs.items()},
        "exit_code": local["farm"]["exit_code"],
        "outcomes": {o: sum(v == o for v in cells(local).values()) for o in sorted(set(cells(local).values()))},
    }
    print(json.dumps(result, indent=1) if a.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    ok = result["same_matrix"] and all(
        runs[n][1]["farm"]["count_cached"] == result["jobs"] for n in ("local-again", "buildbot-again")
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
