"""Worker side of a farm: make a job's env usable here (import its archive, fetch the shipped files)."""

from __future__ import annotations

from pathlib import Path

from kgenv import manifest
from kgenv.distro import debian
from kgenv.distro.archive import Archive
from kgenv.env import lifecycle as envs
from kgenv.errors import ToolError, UserError
from kgenv.fsutil import sha256_cached
from kgenv.manifest import Manifest
from kgenv.progress import QUIET, Progress
from kgenv.runtime.base import Runtime


def worker_env(name: str, image_id: str, rt: Runtime, archive: Path | None = None, progress: Progress = QUIET) -> str:
    """'present' when env `name` with exactly `image_id` is usable on this host, else 'missing'."""
    if archive is not None:
        m = envs.import_(rt, archive, force=True)
        if m.name != name or m.image.id != image_id:
            raise UserError(f"{archive}: holds env {m.name} image {m.image.id[:19]}, not {name} {image_id[:19]}")
    if not manifest.path_of(name).exists():
        return "missing"
    m = manifest.load(name)
    if m.image.id != image_id or rt.image_id(image_id) is None:
        return "missing"
    fetch_files(m, progress)
    return "present"


def fetch_files(m: Manifest, progress: Progress = QUIET) -> None:
    """The shipped files a build reads from the cache (vmlinux, vmlinuz, ...): fetched if this host lacks them."""
    if not all(ref.resolve().exists() for ref in m.files.values()):
        archive = Archive(m.kernel.line, progress=progress)
        debian.fetch(debian.resolve(f"{m.kernel.line}:{m.kernel.release}", archive), archive, progress)
    for role, ref in m.files.items():  # cached per (path, inode, size, mtime): ~1 GB is hashed once, not per job
        if sha256_cached(ref.resolve()) != ref.sha256:
            raise ToolError(f"{ref.resolve()}: sha256 differs from env {m.name}'s files.{role}")
