"""Time `kgenv snapshot BUILD_DIR` on an O= build dir assembled from Debian's current kernel.

The build dir (tests/vendor_tree.py: source tree, headers' config and generated files, -dbg
vmlinux) is assembled once into the cache and not timed; the snapshot itself runs in a fresh
envs dir, so no existing env's package set is reused. Bar as for the Debian path: ≤ 5 min.

Usage: python bench/bench_snapshot_tree.py [LINE]   (root, Docker engine running)
"""

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from vendor_tree import assemble  # noqa: E402

from kgenv.distro import debian  # noqa: E402
from kgenv.env import kbuildcmd  # noqa: E402
from kgenv.env.vendor import snapshot_build_dir  # noqa: E402
from kgenv.progress import Progress  # noqa: E402
from kgenv.runtime.docker import runtime  # noqa: E402


def main(line: str = "bookworm") -> None:
    kf = debian.kernel(line, Progress())
    t0 = time.monotonic()
    build_dir = assemble(kf)
    assembled = time.monotonic() - t0
    os.environ["KGENV_ENVS"] = tempfile.mkdtemp(prefix="kgenv-bench-")
    rt = runtime()
    t1 = time.monotonic()
    m = snapshot_build_dir(build_dir, lambda: rt, f"bench-vendor-{kf.abi}", None, True, Progress())
    took = time.monotonic() - t1
    rt.remove(m.image.id)
    print(
        f"kernel {kf.abi} ({kf.version}); build dir {build_dir} "
        f"({len(kbuildcmd.find(build_dir))} .cmd files; assembled in {assembled:.1f} s, cached after the first run)"
    )
    print(
        f"snapshot BUILD_DIR: {took:.1f} s (bar 300 s); image {m.image.size / 1e9:.2f} GB; "
        f"kbuild_cmds: {m.fingerprint.get('kbuild_cmds')}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
