"""A deterministic Debian root file system from mmdebstrap, with exact package versions pinned."""

import os
import shutil
import subprocess
from pathlib import Path

from kgenv.errors import ToolError
from kgenv.fsutil import write_atomic

# Dropped from the layer: host leakage and state that differs between runs.
HOOK = (
    'rm -f "$1"/etc/resolv.conf "$1"/etc/hostname "$1"/var/cache/ldconfig/aux-cache '
    '"$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log '
    '"$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old '
    # mmdebstrap records our --aptopt here, with the (random) work directory in it.
    '"$1"/etc/apt/apt.conf.d/99mmdebstrap'
)


def preferences(pins: dict[str, str]) -> str:
    """apt preferences that force every pinned version, essential packages included."""
    return "".join(f"Package: {name}\nPin: version {ver}\nPin-Priority: 1001\n\n" for name, ver in sorted(pins.items()))


def build(
    dest: Path,
    suite: str,
    sources: list[str],
    include: list[str],
    pins: dict[str, str],
    epoch: int,
    workdir: Path,
    progress,
) -> dict[str, str]:
    """Write the rootfs tar to dest; return every installed package → version."""
    if not shutil.which("mmdebstrap"):
        raise ToolError("mmdebstrap: not installed (apt-get install mmdebstrap)")
    workdir.mkdir(parents=True, exist_ok=True)
    prefs = workdir / "preferences"
    write_atomic(prefs, preferences(pins))
    listing = workdir / "packages.txt"
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=tar",
        "--quiet",
        "--skip=output/dev",
        f'--aptopt=Dir::Etc::Preferences "{prefs}"',
        f"--include={','.join(sorted(include))}",
        f"--customize-hook=chroot \"$1\" dpkg-query -W -f='${{Package}}=${{Version}}\\n' > {listing}",
        f"--customize-hook={HOOK}",
        suite,
        str(dest),
        *sources,
    ]
    progress.step(f"mmdebstrap {len(include)} packages ({len(pins)} pinned)")
    r = subprocess.run(cmd, env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}, capture_output=True, text=True)
    if r.returncode:
        raise ToolError(f"mmdebstrap failed: {(r.stderr or r.stdout).strip().splitlines()[-3:]}")
    packages = dict(line.split("=", 1) for line in listing.read_text().split())
    wrong = {n: v for n, v in pins.items() if packages.get(n, v) != v}
    if wrong:
        raise ToolError(
            "rootfs: pinned versions not installed: "
            + ", ".join(f"{n}={v} (got {packages[n]})" for n, v in wrong.items())
        )
    return packages
