"""Build an env image: pinned rootfs layer + prepared kernel tree layer, loaded with a reproducible ID."""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kgenv.errors import ToolError
from kgenv.fsutil import cache_dir, sha256_file
from kgenv.image import rootfs, tree
from kgenv.manifest import Manifest
from kgenv.runtime.base import Runtime


@dataclass(frozen=True)
class ImageInputs:
    """Everything the image depends on; the same inputs give the same image ID."""

    name: str
    suite: str
    sources: list[str]
    include: list[str]
    pins: dict[str, str]
    epoch: int
    source_tarball: Path
    config: Path
    symvers: Path | None
    shipped_generated: Path | None  # the headers package's include/generated, for the self-check
    srctree: str
    objtree: str
    make: dict[str, str]
    expect_packages: dict[str, str] | None = None


@dataclass(frozen=True)
class Built:
    id: str
    base_id: str
    rootfs_sha256: str
    tree_sha256: str
    packages: dict[str, str]


def from_manifest(m: Manifest, sources: list[str], exact: bool, shipped_generated: Path | None) -> ImageInputs:
    """Image inputs from a manifest; exact=True pins every recorded package (restore)."""
    return ImageInputs(
        name=m.name,
        suite=m.image.suite,
        sources=sources,
        include=m.image.include.split(","),
        pins=dict(m.packages) if exact else dict(m.toolchain),
        epoch=m.kernel.source_date_epoch,
        source_tarball=m.file("source"),
        config=m.file("config"),
        symvers=m.file("symvers"),
        shipped_generated=shipped_generated,
        srctree=m.kernel.srctree,
        objtree=m.kernel.objtree,
        make=m.make,
        expect_packages=dict(m.packages) if exact else None,
    )


def _env(inp: ImageInputs) -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(inp.epoch),
        "KGENV_SRCTREE": inp.srctree,
        "KGENV_OBJTREE": inp.objtree,
    }


def _check_packages(got: dict[str, str], want: dict[str, str]) -> None:
    diff = sorted(set(got.items()) ^ set(want.items()))
    if diff:
        names = sorted({n for n, _ in diff})[:8]
        raise ToolError(
            "rootfs differs from the manifest: "
            + ", ".join(f"{n}={want.get(n, '-')} (got {got.get(n, '-')})" for n in names)
        )


def build(rt: Runtime, inp: ImageInputs, progress, keep_tmp: bool = False) -> Built:
    """Build and load the image (untagged); the caller tags it once everything checked out."""
    work = Path(tempfile.mkdtemp(prefix=f"{inp.name}.", dir=cache_dir()))
    base_id = None
    try:
        rootfs_tar = work / "rootfs.tar"
        packages = rootfs.build(
            rootfs_tar, inp.suite, inp.sources, inp.include, inp.pins, inp.epoch, work / "apt", progress
        )
        if inp.expect_packages is not None:
            _check_packages(packages, inp.expect_packages)
        labels = {"org.kgenv.env": inp.name}
        base_id = rt.load_archive(work / "base.tar", [rootfs_tar], inp.epoch, _env(inp), labels, inp.srctree)
        stage = work / "stage"
        progress.step(f"unpack {inp.source_tarball.name}")
        src = tree.unpack_source(inp.source_tarball, stage, inp.srctree)
        tree.prepare(rt, base_id, src, inp.srctree, inp.objtree, inp.config, inp.symvers, inp.make, progress)
        if inp.shipped_generated:
            differ = tree.check_generated(src / inp.objtree, inp.shipped_generated)
            if differ:
                raise ToolError(f"prepared tree: generated headers differ from the shipped ones: {', '.join(differ)}")
        progress.step("write tree layer")
        tree_tar = work / "tree.tar"
        tree.layer(stage, tree_tar, inp.epoch)
        progress.step("load env image")
        image_id = rt.load_archive(work / "env.tar", [rootfs_tar, tree_tar], inp.epoch, _env(inp), labels, inp.srctree)
        return Built(image_id, base_id, sha256_file(rootfs_tar), sha256_file(tree_tar), packages)
    finally:
        if base_id:
            rt.remove(base_id)
        if keep_tmp:
            progress.step(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
