"""`kgenv snapshot`: record a shipped kernel's toolchain into a manifest and a reproducible env image."""

from dataclasses import replace
from pathlib import Path

from . import __version__, manifest, toolchain
from .distro import debian
from .distro.archive import Archive
from .envs import verify_image
from .errors import RefusedError, UserError
from .fingerprint import Fingerprint, config_sha256, fingerprint
from .fsutil import cache_dir, sha256_file
from .image.build import build, from_manifest
from .manifest import FileRef, Image, Kernel, Manifest

REPO = "kgenv"


def _ref(path: Path, package: str) -> FileRef:
    return FileRef(str(path.relative_to(cache_dir())), sha256_file(path), package)


def _files(kf: debian.KernelFiles) -> dict[str, FileRef]:
    kp = kf.packages
    return {"vmlinux": _ref(kf.vmlinux, kp.dbg.pin), "vmlinuz": _ref(kf.vmlinuz, kp.image.pin),
            "config": _ref(kf.config, kp.headers.pin), "symvers": _ref(kf.symvers, kp.headers.pin),
            "source": _ref(kf.source_tarball, kp.source.pin)}


def _fingerprint_table(fp: Fingerprint) -> dict[str, str]:
    keys = ("cc_version_text", "comment", "linux_compiler", "uts_version", "compile_by", "compile_host",
            "producer")
    d = fp.to_dict()
    return {**{k: d[k] for k in keys}, **{k.lower(): v for k, v in fp.config.items()}}


def snapshot_debian(spec: str, rt, name: str | None, force: bool, progress, keep_tmp: bool = False) -> Manifest:
    line, _ = debian.line_of(spec)
    archive = Archive(line, progress=progress)
    kp = debian.resolve(spec, archive)
    name = name or f"debian-{kp.abi}"
    if manifest.path_of(name).exists() and not force:
        raise UserError(f"{manifest.path_of(name)}: env exists; use --force to replace it")
    kf = debian.fetch(kp, archive, progress)
    progress.step(f"fingerprint {kf.vmlinux.name}")
    fp = fingerprint(kf.vmlinux, kf.config, kf.headers_dir / "include" / "generated",
                     kf.headers_dir / ".kernelvariables")
    pins = toolchain.resolve(fp, archive)
    files = _files(kf)
    kernel = Kernel(distro="debian", line=line, release=fp.release, version=kp.version,
                    build_id=fp.build_id, banner=fp.banner, srctree=fp.srctree or "/usr/src/linux",
                    objtree=fp.objtree, source_package=kp.source.pin, source_sha256=files["source"].sha256,
                    config_sha256=config_sha256(kf.config),
                    # dpkg keeps the build's SOURCE_DATE_EPOCH as the files' mtime.
                    source_date_epoch=int(kf.vmlinux.stat().st_mtime))
    include = sorted(set(toolchain.BUILD_DEPS) | set(pins))
    draft = Manifest(name=name, kernel=kernel, fingerprint=_fingerprint_table(fp), make=fp.make,
                     toolchain=pins, image=Image("", f"{REPO}/{name}:env", line, ",".join(include), "", "", "", 0),
                     packages={}, files=files, kgenv_version=__version__)
    built = build(rt, from_manifest(draft, archive.sources_lines(), False, kf.headers_dir / "include" / "generated"),
                  progress, keep_tmp)
    return finish(rt, draft, built, force, progress)


def finish(rt, draft: Manifest, built, force: bool, progress) -> Manifest:
    """Self-check the built image, then tag it and write the manifest (both or neither)."""
    image = replace(draft.image, id=built.id, base_id=built.base_id, rootfs_sha256=built.rootfs_sha256,
                    tree_sha256=built.tree_sha256, size=rt.size(built.id))
    m = replace(draft, image=image, packages=built.packages)
    failures = [c for c in verify_image(rt, m, progress) if not c.ok]
    if failures:
        rt.remove(built.id)
        raise RefusedError(f"{draft.name}: env self-check failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failures))
    repo, tag = m.image.tag.rsplit(":", 1)
    rt.tag(built.id, repo, tag)
    try:
        manifest.save(m, force=force)
    except BaseException:
        rt.remove(m.image.tag)
        raise
    return m
