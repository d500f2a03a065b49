"""Time `kgenv snapshot` of Debian's current kernel, downloads excluded (bar: ≤ 5 min on 2 cores).

Usage: python bench/bench_snapshot.py [LINE]   (root, Docker engine running)
"""

import os
import sys
import tempfile
import time

from kgenv.distro import debian
from kgenv.env.debian import snapshot_debian
from kgenv.progress import Progress
from kgenv.runtime.docker import runtime


def main(line: str = "bookworm") -> None:
    t0 = time.monotonic()
    kf = debian.kernel(line, Progress())  # downloads and unpacking: cached, not part of the bar
    fetched = time.monotonic() - t0
    os.environ["KGENV_ENVS"] = tempfile.mkdtemp(prefix="kgenv-bench-")
    rt = runtime()
    t1 = time.monotonic()
    m = snapshot_debian(f"{line}:{kf.abi}", rt, f"bench-{kf.abi}", True, Progress())
    took = time.monotonic() - t1
    rt.remove(m.image.id)
    print(f"kernel {kf.abi} ({kf.version}); fetch {fetched:.1f} s (cached after the first run)")
    print(f"snapshot excluding downloads: {took:.1f} s (bar 300 s); image {m.image.size / 1e9:.2f} GB")


if __name__ == "__main__":
    main(*sys.argv[1:])
