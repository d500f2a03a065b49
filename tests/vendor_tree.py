"""A genuine vendor-style O= build directory assembled from Debian's own artefacts of one kernel.

Layout as Debian's build has it: the source tree (from the linux-source tarball) with the O=
directory where the vmlinux's DWARF says it was (debian/build/build_amd64_none_amd64) inside it, holding the headers package's .config,
.kernelvariables, Module.symvers, include/generated, include/config and arch/x86/include/generated,
the -dbg vmlinux, the shipped boot image as arch/x86/boot/bzImage, and the `source` symlink Kbuild
writes. Debian ships no `.*.cmd` files; `with_cmd_files` adds the ones Kbuild writes while
preparing the same tree in the Debian env image (the prepare-stage objects: bounds.s,
asm-offsets.s, scripts/mod/empty.o, host tools). Cached in the kgenv cache dir.
"""

import base64
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from kgenv.distro.debian import KernelFiles
from kgenv.env.fingerprint import read_vmlinux
from kgenv.fsutil import cache_dir

HEADER_PARTS = (
    ".config",
    ".kernelvariables",
    "Module.symvers",
    "include/generated",
    "include/config",
    "arch/x86/include/generated",
)


def _link_or_copy(src: Path, dest: Path) -> None:
    """Hard link (same file system: free, keeps the mtime), else copy with the mtime."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def assemble(kf: KernelFiles) -> Path:
    """The O= build directory of kf (cached); returns BUILD_DIR."""
    upstream = kf.version.split("-")[0]
    root = cache_dir() / "fixtures" / "vendor-tree" / f"{kf.abi}_{kf.version}"
    if (root / ".complete").exists():
        return root / (root / ".complete").read_text()
    objtree = read_vmlinux(kf.vmlinux)["objtree"]
    assert objtree and not objtree.startswith(".."), f"{kf.vmlinux}: no O= dir inside the source tree in DWARF"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(kf.source_tarball), "-C", str(root)], check=True)
    (top,) = [p for p in root.iterdir()]
    src = top.rename(root / f"linux-{upstream}")
    build_dir = src / objtree
    build_dir.mkdir(parents=True)
    # tar keeps the headers' symlinks (scripts, tools -> linux-kbuild) out: they are not build output.
    for part in HEADER_PARTS:
        p = kf.headers_dir / part
        if p.is_dir():
            shutil.copytree(p, build_dir / part, symlinks=True, copy_function=shutil.copy2)
        elif p.exists():
            shutil.copy2(p, build_dir / part)
    _link_or_copy(kf.vmlinux, build_dir / "vmlinux")
    _link_or_copy(kf.vmlinuz, build_dir / "arch/x86/boot/bzImage")
    (build_dir / "source").symlink_to(src)
    (root / ".complete").write_text(str(build_dir.relative_to(root)))
    return build_dir


def with_cmd_files(build_dir: Path, rt, image_id: str, objtree: str, srctree: str) -> Path:
    """Add the .cmd files Kbuild wrote into the env image's prepared O= dir (once)."""
    root = next(p for p in build_dir.parents if (p / ".complete").exists())
    done = root / ".cmd-files"  # beside, not inside, the source tree
    if done.exists():
        return build_dir
    r = rt.run(
        image_id,
        ["bash", "-c", f"cd {srctree}/{objtree} && find . -name '.*.cmd' -print0 | tar --null -T - -c | base64 -w0"],
    )
    assert r.exit_code == 0, r.output[-500:]
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(r.output.strip()))) as tar:
        names = [m for m in tar.getmembers() if m.isfile() and os.path.basename(m.name).endswith(".cmd")]
        tar.extractall(build_dir, members=names)
    vmlinux_mtime = build_dir.joinpath("vmlinux").stat().st_mtime
    for m in names:  # written "during" the build, i.e. no later than the link
        os.utime(build_dir / m.name, (vmlinux_mtime, vmlinux_mtime))
    done.touch()
    return build_dir
