"""The one place an env's Manifest is assembled (draft) and committed: self-check, tag, save."""

from dataclasses import replace

from kgenv import __version__, manifest
from kgenv.env import toolchain
from kgenv.env.fingerprint import Fingerprint
from kgenv.env.lifecycle import verify_image
from kgenv.errors import RefusedError
from kgenv.image.build import Built
from kgenv.manifest import FileRef, Image, Kernel, Manifest
from kgenv.progress import Progress
from kgenv.runtime.base import Runtime

REPO = "kgenv"
FINGERPRINT_KEYS = (
    "cc_version_text",
    "comment",
    "linux_compiler",
    "uts_version",
    "compile_by",
    "compile_host",
    "producer",
)


def fingerprint_table(fp: Fingerprint) -> dict[str, str]:
    """The manifest's [fingerprint]: the binary's strings plus the config's toolchain values."""
    d = fp.to_dict()
    return {**{k: d[k] for k in FINGERPRINT_KEYS}, **{k.lower(): v for k, v in fp.config.items()}}


def draft(
    name: str,
    kernel: Kernel,
    fp: Fingerprint,
    make: dict[str, str],
    pins: dict[str, str],
    files: dict[str, FileRef],
    extra_fingerprint: dict[str, str] | None = None,
) -> Manifest:
    """A manifest with everything but the image's identity (known once the image is built)."""
    include = sorted(set(toolchain.BUILD_DEPS) | set(pins))
    image = Image("", f"{REPO}/{name}:env", kernel.line, ",".join(include), "", "", "", 0)
    return Manifest(
        name=name,
        kernel=kernel,
        fingerprint={**fingerprint_table(fp), **(extra_fingerprint or {})},
        make=make,
        toolchain=pins,
        image=image,
        packages={},
        files=files,
        kgenv_version=__version__,
    )


def commit(rt: Runtime, draft: Manifest, built: Built, force: bool, progress: Progress) -> Manifest:
    """Self-check the built image, then tag it and write the manifest (both or neither)."""
    image = replace(
        draft.image,
        id=built.id,
        base_id=built.base_id,
        rootfs_sha256=built.rootfs_sha256,
        tree_sha256=built.tree_sha256,
        size=rt.size(built.id),
    )
    m = replace(draft, image=image, packages=built.packages)
    failures = [c for c in verify_image(rt, m, progress) if not c.ok]
    if failures:
        rt.remove(built.id)
        raise RefusedError(
            f"{draft.name}: env self-check failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failures)
        )
    repo, tag = m.image.tag.rsplit(":", 1)
    rt.tag(built.id, repo, tag)
    try:
        manifest.save(m, force=force)
    except BaseException:
        rt.remove(m.image.tag)
        raise
    return m
