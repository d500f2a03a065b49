"""`kgenv snapshot`: record a shipped kernel's toolchain into a manifest and a reproducible env image."""

from pathlib import Path

from kgenv import manifest
from kgenv.distro import debian
from kgenv.distro.archive import Archive
from kgenv.env import toolchain
from kgenv.env.draft import commit, draft
from kgenv.env.fingerprint import config_sha256, fingerprint
from kgenv.errors import UserError
from kgenv.fsutil import cache_dir, sha256_cached
from kgenv.image.build import build, from_manifest
from kgenv.manifest import FileRef, Kernel, Manifest
from kgenv.runtime.base import Runtime


def _ref(path: Path, package: str) -> FileRef:
    return FileRef(str(path.relative_to(cache_dir())), sha256_cached(path), package)  # seeds Manifest.file's cache


def _files(kf: debian.KernelFiles) -> dict[str, FileRef]:
    kp = kf.packages
    return {
        "vmlinux": _ref(kf.vmlinux, kp.dbg.pin),
        "vmlinuz": _ref(kf.vmlinuz, kp.image.pin),
        "config": _ref(kf.config, kp.headers.pin),
        "symvers": _ref(kf.symvers, kp.headers.pin),
        "source": _ref(kf.source_tarball, kp.source.pin),
    }


def snapshot_debian(
    spec: str, rt: Runtime, name: str | None, force: bool, progress, keep_tmp: bool = False
) -> Manifest:
    line, _ = debian.line_of(spec)
    archive = Archive(line, progress=progress)
    kp = debian.resolve(spec, archive)
    name = name or f"debian-{kp.abi}"
    if manifest.path_of(name).exists() and not force:
        raise UserError(f"{manifest.path_of(name)}: env exists; use --force to replace it")
    kf = debian.fetch(kp, archive, progress)
    progress.step(f"fingerprint {kf.vmlinux.name}")
    fp = fingerprint(
        kf.vmlinux, kf.config, kf.headers_dir / "include" / "generated", kf.headers_dir / ".kernelvariables"
    )
    pins = toolchain.resolve(fp, archive)
    files = _files(kf)
    kernel = Kernel(
        distro="debian",
        line=line,
        release=fp.release,
        version=kp.version,
        build_id=fp.build_id,
        banner=fp.banner,
        srctree=fp.srctree or "/usr/src/linux",
        objtree=fp.objtree,
        source_package=kp.source.pin,
        source_sha256=files["source"].sha256,
        config_sha256=config_sha256(kf.config),
        # dpkg keeps the build's SOURCE_DATE_EPOCH as the files' mtime.
        source_date_epoch=int(kf.vmlinux.stat().st_mtime),
    )
    m = draft(name, kernel, fp, fp.make, pins, files)
    built = build(
        rt,
        from_manifest(m, archive.sources_lines(), False, kf.headers_dir / "include" / "generated"),
        progress,
        keep_tmp,
    )
    return commit(rt, m, built, force, progress)
