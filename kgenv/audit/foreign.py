"""A candidate image from another Debian suite: its own rootfs (e.g. trixie + gcc-14) plus the env's tree layer.

A newer compiler cannot be installed into the env's rootfs (trixie's gcc-14 needs trixie's libc and
binutils), so the candidate gets a whole rootfs of its suite, and the env's prepared kernel tree is
added as the very same layer (checked by its sha256 against the manifest). Built once, then reused
by tag. The rootfs is not pinned: the image records what it installed in its labels instead.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO, cast

from kgenv.distro.archive import Archive
from kgenv.env.toolchain import BUILD_DEPS
from kgenv.errors import ToolError, UserError
from kgenv.fsutil import cache_dir, write_atomic
from kgenv.image import rootfs
from kgenv.manifest import Manifest
from kgenv.runtime.base import Runtime

SPEC_RE = re.compile(r"^(?P<suite>[a-z]+)/(?P<cc>(?:gcc|clang)-\d+)$")
TAG_REPO = "kgenv-candidate"
# what a kernel compile needs besides the compiler (pahole for BTF, binutils for the assembler)
EXTRA = ("binutils", "dwarves")


def parse_spec(spec: str) -> tuple[str, str]:
    """'trixie/gcc-14' -> ('trixie', 'gcc-14')."""
    m = SPEC_RE.match(spec)
    if not m:
        raise UserError(f"{spec}: not a SUITE/COMPILER spec like trixie/gcc-14")
    return m["suite"], m["cc"]


def tag_of(m: Manifest, suite: str, cc: str) -> str:
    """Keyed by the tree layer, so envs sharing a prepared tree share the candidate."""
    return f"{TAG_REPO}/tree-{m.image.tree_sha256[:16]}:{suite}-{cc}"


def tree_layer(rt: Runtime, m: Manifest, dest_dir: Path, progress=None) -> Path:
    """The env image's tree layer as a tar file, taken from `docker save` and checked by sha256."""
    want = m.image.tree_sha256
    out = dest_dir / f"{want}.tar"
    if out.exists():
        return out
    if progress:
        progress.step(f"extract tree layer {want[:12]} from {m.image.id[7:19]}")
    stream = cast(IO[bytes], _ChunkReader(rt.save_chunks(m.image.id)))  # stream mode only reads
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            src = tar.extractfile(member) if member.isfile() and member.name.endswith("layer.tar") else None
            if src is None:
                continue
            tmp = dest_dir / f".{want}.part"
            h = hashlib.sha256()
            try:
                with src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        dst.write(chunk)
                if h.hexdigest() == want:
                    tmp.replace(out)
                    return out
            finally:  # a full disk or Ctrl-C must not leave a 1.7 GB part file in the cache
                tmp.unlink(missing_ok=True)
    raise ToolError(f"{m.name}: image {m.image.id[7:19]} has no layer with the manifest's tree sha256 {want[:12]}")


class _ChunkReader:
    """A file-like reader over the engine's chunk iterator (tarfile's stream mode reads from it)."""

    def __init__(self, chunks):
        self._it = iter(chunks)
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _image_env(m: Manifest) -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(m.kernel.source_date_epoch),
        "KGENV_SRCTREE": m.kernel.srctree,
        "KGENV_OBJTREE": m.kernel.objtree,
    }


def _rootfs(suite: str, cc: str, epoch: int, progress) -> tuple[Path, dict[str, str]]:
    """SUITE's minbase + build deps + compiler, as a tar in the cache, with its package list."""
    d = cache_dir() / "candidates" / f"{suite}-{cc}"
    tar, listing = d / "rootfs.tar", d / "packages.txt"
    if not (tar.exists() and listing.exists()):
        d.mkdir(parents=True, exist_ok=True)
        include = sorted(set(BUILD_DEPS) | set(EXTRA) | {cc})
        with tempfile.TemporaryDirectory(dir=d) as work:
            got = rootfs.build(
                Path(work) / "rootfs.tar",
                suite,
                Archive(suite).sources_lines(),
                include,
                {},
                epoch,
                Path(work) / "apt",
                progress,
            )
            (Path(work) / "rootfs.tar").replace(tar)
            write_atomic(listing, "".join(f"{k}={v}\n" for k, v in sorted(got.items())))
    return tar, dict(line.split("=", 1) for line in listing.read_text().split())


def candidate_image(rt: Runtime, m: Manifest, spec: str, progress=None) -> str:
    """The image ID of env `m`'s tree on SUITE's rootfs with COMPILER; built on first use.

    The rootfs tar is cached per suite and compiler, so another tree on it costs only a load.
    """
    suite, cc = parse_spec(spec)
    tag = tag_of(m, suite, cc)
    found = rt.image_id(tag)
    if found:
        return found
    work = Path(tempfile.mkdtemp(prefix=f"candidate-{suite}-{cc}.", dir=cache_dir()))
    try:
        rootfs_tar, packages = _rootfs(suite, cc, m.kernel.source_date_epoch, progress)
        layer = tree_layer(rt, m, work, progress)
        labels = {
            "org.kgenv.tree": m.image.tree_sha256,
            "org.kgenv.cc": cc,
            "org.kgenv.suite": suite,
            **{f"org.kgenv.pkg.{p}": packages[p] for p in sorted({cc, *EXTRA}) if p in packages},
        }
        if progress:
            progress.step(f"load candidate image {tag}")
        image_id = rt.load_archive(
            work / "candidate.tar",
            [rootfs_tar, layer],
            m.kernel.source_date_epoch,
            _image_env(m),
            labels,
            m.kernel.srctree,
        )
        repo, _, name = tag.rpartition(":")
        rt.tag(image_id, repo, name)
        return image_id
    finally:
        shutil.rmtree(work, ignore_errors=True)
