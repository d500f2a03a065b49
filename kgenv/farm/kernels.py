"""Turn a plan's kernel specs into envs: list a Debian line's ABIs, snapshot or restore on demand."""

from __future__ import annotations

import re

from kgenv import manifest
from kgenv.distro import debian
from kgenv.distro.archive import Archive
from kgenv.distro.debversion import sort_key
from kgenv.errors import UserError
from kgenv.manifest import Manifest
from kgenv.progress import QUIET, Progress
from kgenv.runtime.base import Runtime


def debian_abis(line: str, archive: Archive | None = None) -> list[str]:
    """Every ABI of the line's own kernel series still complete in the archive (image, -dbg, headers,
    source of one version), oldest first."""
    archive = archive or Archive(line)
    series = debian.LINES.get(line)
    pat = re.compile(r"^linux-image-(.+)-unsigned$")
    abis = []
    for name in archive.index():
        m = pat.match(name)
        abi = m.group(1) if m else ""
        found = debian.ABI_RE.match(abi)
        if found and found.group(1) == series:
            abis.append(abi)
    complete = []
    for abi in abis:
        try:
            complete.append((debian.resolve(f"{line}:{abi}", archive), abi))
        except UserError:
            continue  # some package of that ABI is gone from the archive
    complete.sort(key=lambda c: sort_key(c[0].version))
    return [abi for _, abi in complete]


def env_names(specs: tuple[str, ...], progress: Progress = QUIET) -> list[tuple[str, str]]:
    """(env name, debian spec or '') for each kernel, in plan order, without duplicates."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        distro, sep, what = spec.partition(":")
        if not sep:
            out.append((spec, ""))
            continue
        line, abi = debian.line_of(what)
        if abi:
            out.append((f"debian-{abi}", f"{line}:{abi}"))
            continue
        progress.step(f"list {line} kernels in the archive")
        abis = debian_abis(line, Archive(line, progress=progress))
        if not abis:
            raise UserError(f"{spec}: no complete {line} kernel in the archive")
        out += [(f"debian-{a}", f"{line}:{a}") for a in abis]
    first: dict[str, tuple[str, str]] = {}
    for e in out:
        first.setdefault(e[0], e)
    return list(first.values())


def ensure(name: str, debian_spec: str, rt: Runtime, progress: Progress = QUIET) -> Manifest:
    """The env's manifest with its image in the engine: restored or snapshotted when missing."""
    from kgenv.env.debian import snapshot_debian
    from kgenv.env.lifecycle import restore

    if manifest.path_of(name).exists():
        m = manifest.load(name)
        if rt.image_id(m.image.id) is None:
            progress.step(f"{name}: image {m.image.id[7:19]} missing, restoring from the manifest")
            restore(rt, m, progress)
        return m
    if not debian_spec:
        raise UserError(f"{manifest.path_of(name)}: no such env (snapshot it, or name it debian:<abi>)")
    progress.step(f"{name}: no env yet, snapshotting {debian_spec}")
    return snapshot_debian(debian_spec, rt, name, False, progress)
