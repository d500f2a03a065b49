"""Benchmark of `kgenv audit`: time to audit a sample of built-in TUs with a candidate (default: the env's own image).

usage: python bench/bench_audit.py ENV [N [SEED [TOOLCHAIN | cc:PKG]]]
Runs the audit twice (the first run also fills the CU and source-list caches) and prints a markdown
row per run: wall time, the compile step (one container run for all TUs), verify, and the result.
"""

from __future__ import annotations

import sys
import time

from kgenv import manifest
from kgenv.audit import audit
from kgenv.fsutil import cache_dir
from kgenv.runtime.docker import runtime


def row(label: str, r, wall: float) -> str:
    s, t = r.summary, r.timings
    return (
        f"| {label} | {s['tus']} | {s['functions']} | {s['percent_identical']:.1f} % | {r.verdict} "
        f"| {wall:.1f} s | {t.get('compile_s', 0):.1f} s | {t.get('verify_s', 0):.2f} s "
        f"| {t.get('probe_s', 0):.1f} s | {t.get('sample_s', 0):.2f} s |"
    )


def main(argv: list[str]) -> None:
    m = manifest.load(argv[0])
    n = int(argv[1]) if len(argv) > 1 else 20
    seed = int(argv[2]) if len(argv) > 2 else 0
    spec = argv[3] if len(argv) > 3 else None
    cc = spec[3:] if spec and spec.startswith("cc:") else None
    toolchain = None if cc else spec
    rt = runtime()
    print("| run | TUs | functions | identical | verdict | wall | compile | verify | probe | sample |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label in ("first (cold caches)", "second"):
        if label.startswith("first"):
            # drop the sampling caches (CU names by build-id, source list by tree) to time them too
            for f in (cache_dir() / "audit").glob(f"cus-{m.kernel.build_id}.json"):
                f.unlink()
            for f in (cache_dir() / "audit").glob(f"sources-{m.image.tree_sha256[:32]}.json"):
                f.unlink()
        start = time.perf_counter()
        r = audit(rt, m, toolchain, cc, None, n, seed)
        print(row(f"{label}, {r.candidate.label}", r, time.perf_counter() - start), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
