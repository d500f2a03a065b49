#!/usr/bin/env python3
"""A tiny real job for the farm's own tests: same arguments and outputs as `kgenv build`, seconds to run.

It compiles the "diff" (a small C file) with the host's cc: built when it compiles, refused
with gcc's first error when it does not. Markers in the source steer the farm's edge cases:
`// sleep N` (slow job), `// crash` (dies without a report). With --boot-test the check
script runs on the host (it is a test fixture): non-zero is a failed boot proof.
Each run appends its start and end to $TINYJOB_RUNS, so tests can count real runs.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from kgenv.build.report import BootSummary, BuildReport, EnvInfo, FixInfo, ResultInfo, ToolInfo


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["build"])
    ap.add_argument("diff", type=Path)
    ap.add_argument("--env", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("-o", dest="out", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("-j", type=int, default=1)
    ap.add_argument("--boot-test", action="store_true")
    ap.add_argument("--check", type=Path)
    ap.add_argument("--tu", action="append", default=[])
    a = ap.parse_args()
    _record("start", a)
    try:
        return _build(a)
    finally:
        _record("end", a)


def _record(event: str, a) -> None:
    if os.environ.get("TINYJOB_RUNS"):
        with open(os.environ["TINYJOB_RUNS"], "a") as f:
            f.write(
                json.dumps({"event": event, "env": a.env, "name": a.name, "t": time.time(), "pid": os.getpid()}) + "\n"
            )


def _build(a) -> int:
    src = a.diff.read_text()
    if m := re.search(r"// sleep ([0-9.]+)", src):
        time.sleep(float(m.group(1)))
    if "// crash" in src:
        print("tinyjob: crashing as asked", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    ko = a.out / f"livepatch-{a.name}.ko"
    t0 = time.monotonic()
    r = subprocess.run(["cc", "-x", "c", "-c", str(a.diff), "-o", str(ko)], capture_output=True, text=True)
    print(r.stdout + r.stderr, end="")
    stages = {"compile": round(time.monotonic() - t0, 3)}
    outcome, code, reason = (
        ("built", 0, "")
        if r.returncode == 0
        else ("refused", 1, next((ln for ln in r.stderr.splitlines() if "error" in ln), "does not compile"))
    )
    result = ResultInfo(
        outcome,
        code,
        reason,
        str(ko) if code == 0 else "",
        hashlib.sha256(ko.read_bytes()).hexdigest() if code == 0 else "",
        (),
    )
    report = BuildReport(
        kgenv=ToolInfo("tinyjob", " ".join(sys.argv)),
        env=EnvInfo(a.env, a.image, "", "", ""),
        fix=FixInfo(a.name, str(a.diff), hashlib.sha256(a.diff.read_bytes()).hexdigest(), (), ()),
        result=result,
        functions=(),
        stages=stages,
    )
    if code == 0:
        (a.out / f"{a.name}.c").write_text(src)
        (a.out / "Kbuild").write_text(f"obj-m += livepatch-{a.name}.o\n")
    else:
        ko.unlink(missing_ok=True)
    if a.boot_test and code == 0:
        ok = subprocess.run(["sh", str(a.check)]).returncode == 0 if a.check else True
        boot = BootSummary("pass" if ok else "fail", "" if ok else "check failed", "", "", None)
        if not ok:
            result = replace(result, outcome="refused", exit_code=1, reason="boot test failed: check failed")
            code = 1
        report = replace(report, result=result, boot=boot)
    (a.out / "report.json").write_text(report.to_json())
    print(f"{outcome.upper()}: {a.name}")
    return code


if __name__ == "__main__":
    sys.exit(main())
