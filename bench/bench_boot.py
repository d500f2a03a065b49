"""Benchmark the boot test: N boots of the livepatch sample on the shipped kernel, median per phase.

    python bench/bench_boot.py [--runs 5] [--kernel VMLINUZ --module KO] [--json]

Without --kernel/--module it fetches the current bookworm kernel (cached) and builds the sample.
The bar: a boot test takes at most 30 s under TCG on 2 cores. The tests assert no durations:
tests/test_boot_real.py checks what a boot reports, this script measures how long it takes
(figures in bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BAR_SECONDS = 30.0
CHECK = "grep -q 'this has been live patched' /proc/cmdline\n"


def _sample(workdir: Path) -> tuple[Path, Path]:
    """(vmlinuz, sample module) from the Debian cache, built with the tests' helper."""
    sys.path.insert(0, str(REPO / "tests"))
    from boot_kmod import build_module, livepatch_sample  # noqa: E402 (test helper, not a package)

    from kgenv.distro import debian

    kernel = debian.kernel(os.environ.get("KGENV_TEST_LINE", "bookworm"))
    src = livepatch_sample(kernel, workdir / "src")
    return kernel.vmlinuz, build_module(kernel, [src], workdir / "sample")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kernel", type=Path)
    ap.add_argument("--module", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from kgenv.boot import TIMINGS, boot_test

    with tempfile.TemporaryDirectory(prefix="kgenv-bench-boot-") as tmp:
        work = Path(tmp)
        if args.kernel and args.module:
            kernel, module = args.kernel, args.module
        else:
            kernel, module = _sample(work)
        check = work / "check.sh"
        check.write_text(CHECK)
        boots = []
        for i in range(args.runs):
            b = boot_test(
                module, kernel, check=check, sympos="vmlinux cmdline_proc_show 0\n", serial_log=work / f"serial-{i}.log"
            )
            boots.append(b)
            if not args.json:
                print(f"run {i + 1}/{args.runs}: {b.result} in {b.timings['total']:.2f} s", flush=True)

    median = {
        k: round(statistics.median(b.timings[k] for b in boots), 3)
        for k in TIMINGS
        if all(b.timings[k] is not None for b in boots)
    }
    summary = {
        "runs": args.runs,
        "passed": sum(b.passed for b in boots),
        "cpus_host": os.cpu_count(),
        "median_seconds": median,
        "max_total": round(max(b.timings["total"] for b in boots), 3),
        "bar_seconds": BAR_SECONDS,
        "within_bar": median["total"] <= BAR_SECONDS,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"median boot test {median['total']:.2f} s (max {summary['max_total']:.2f} s, "
            f"bar {BAR_SECONDS:.0f} s) over {args.runs} runs, {summary['passed']} passed"
        )
        print("median phases: " + ", ".join(f"{k} {v:.2f}" for k, v in median.items()))
    return 0 if summary["within_bar"] and summary["passed"] == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
