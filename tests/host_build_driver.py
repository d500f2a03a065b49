"""Run inside an env image: `kgenv build --runtime host` (the container *is* the build root).

    python3 host_build_driver.py ENV DIFF OUTDIR NAME

Prints one JSON line: the fingerprint differences, the build's outcome, and whether the tree came
back exactly as it was.
"""

import json
import subprocess
import sys
from pathlib import Path

from kgenv import manifest
from kgenv.build.report import BuildReport
from kgenv.runtime.host import fingerprint_differences, tree_index


def main() -> None:
    env, diff, outdir, name = sys.argv[1:5]
    m = manifest.load(env)
    differences = fingerprint_differences(m)
    before = tree_index(Path(m.kernel.srctree))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kgenv",
            "build",
            diff,
            "--env",
            env,
            "-o",
            outdir,
            "--name",
            name,
            "--runtime",
            "host",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    after = tree_index(Path(m.kernel.srctree))
    if r.stdout.strip().startswith("{"):
        result = BuildReport.from_dict(json.loads(r.stdout), "kgenv build --json").result
        outcome, reason = result.outcome, result.reason
    else:
        outcome, reason = "no report", r.stderr[-2000:]
    print(
        json.dumps(
            {
                "differences": differences,
                "exit_code": r.returncode,
                "outcome": outcome,
                "reason": reason,
                "tree_unchanged": before == after,
            }
        )
    )


if __name__ == "__main__":
    main()
