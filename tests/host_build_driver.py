"""Run inside an env image: `kgenv build` with the host runtime (the container *is* the build root).

    python3 host_build_driver.py ENV DIFF OUTDIR NAME

Prints one JSON line: the fingerprint differences, the build's outcome, and whether the tree came
back exactly as it was.
"""

import json
import sys
from pathlib import Path

from kgenv import manifest
from kgenv.build import pipeline
from kgenv.runtime.host import HostRuntime, _index, fingerprint_differences


def main() -> None:
    env, diff, outdir, name = sys.argv[1:5]
    m = manifest.load(env)
    differences = fingerprint_differences(m)
    before = _index(Path(m.kernel.srctree))
    result = pipeline.build(pipeline.Request(diff=Path(diff), env=m, outdir=Path(outdir), name=name), HostRuntime(m))
    after = _index(Path(m.kernel.srctree))
    print(json.dumps({"differences": differences, "exit_code": result.exit_code,
                      "outcome": result.report["result"]["outcome"], "reason": result.report["result"]["reason"],
                      "tree_unchanged": before == after}))


if __name__ == "__main__":
    main()
