"""`kgenv envs`: list, show, verify (image self-check), restore, export and import env images."""

import io
import json
import shlex
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from kgenv import manifest
from kgenv.distro import debian
from kgenv.distro.archive import Archive
from kgenv.errors import ToolError, UserError
from kgenv.fsutil import sha256_cached
from kgenv.image import tree
from kgenv.image.build import build, from_manifest
from kgenv.manifest import Manifest
from kgenv.progress import Progress
from kgenv.runtime.base import Runtime


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


PROBE = "int kgenv_probe(int x) { return x + 1; }\n"


def _probe_script(m: Manifest) -> str:
    cc = m.make.get("CC", "gcc")
    return "\n".join(
        [
            f"echo CC=$({shlex.quote(cc)} --version | head -n1)",
            "echo LD=$(ld --version | head -n1)",
            "echo PAHOLE=$(pahole --version 2>/dev/null)",
            f"printf %s {shlex.quote(PROBE)} > /tmp/probe.c",
            f"{shlex.quote(cc)} -O2 -c /tmp/probe.c -o /tmp/probe.o",
            "echo COMMENT=$(readelf -p .comment /tmp/probe.o | sed -n 's/^ *\\[ *[0-9a-f]*\\] *//p' | head -n1)",
            f"cd {shlex.quote(m.kernel.srctree)}",
            f"{tree.config_stable(m.make, m.kernel.objtree)} >/dev/null 2>&1"
            " && echo OLDDEFCONFIG=unchanged || echo OLDDEFCONFIG=changed",
        ]
    )


def verify_image(rt: Runtime, m: Manifest, progress) -> list[Check]:
    """Inside the image: the exact compiler string, a probe's .comment, binutils, pahole, config stability."""
    if rt.image_id(m.image.id) is None:
        return [Check("image", False, f"{m.image.id[:19]} not in the engine (kgenv envs restore {m.name})")]
    progress.step(f"self-check {m.name}")
    r = rt.run(m.image.id, ["bash", "-c", _probe_script(m)])
    got = dict(line.split("=", 1) for line in r.output.splitlines() if "=" in line and line.split("=")[0].isupper())
    pahole = m.fingerprint.get("pahole_version", "0")
    want_pahole = f"v{int(pahole) // 100}.{int(pahole) % 100}" if pahole.isdigit() and int(pahole) else ""
    ld_ver = m.fingerprint.get("linux_compiler", "").rsplit(" ", 1)[-1]
    return [
        Check(
            "compiler",
            got.get("CC") == m.fingerprint["cc_version_text"],
            f"{got.get('CC', '?')!r} (recorded {m.fingerprint['cc_version_text']!r})",
        ),
        Check(
            "comment",
            got.get("COMMENT") == m.fingerprint.get("comment", ""),
            f"probe .comment {got.get('COMMENT', '?')!r} (vmlinux {m.fingerprint['comment']!r})",
        ),
        Check("binutils", got.get("LD", "").endswith(" " + ld_ver), f"{got.get('LD', '?')!r}"),
        Check(
            "pahole",
            not want_pahole or got.get("PAHOLE") == want_pahole,
            f"{got.get('PAHOLE', '?')!r} (recorded {want_pahole or 'none'})",
        ),
        Check("config", got.get("OLDDEFCONFIG") == "unchanged", f"olddefconfig {got.get('OLDDEFCONFIG', 'failed')}"),
    ]


def show(m: Manifest) -> dict:
    """Two levels deep: sections of scalars (packages and files summarised)."""
    return {
        "name": m.name,
        "kernel": asdict(m.kernel),
        "fingerprint": m.fingerprint,
        "make": m.make,
        "toolchain": m.toolchain,
        "image": asdict(m.image),
        "files": {k: v.path for k, v in m.files.items()},
        "packages": {"count": len(m.packages)},
    }


def restore(rt: Runtime, m: Manifest, progress, keep_tmp: bool = False) -> str:
    """Bring back what the manifest records: the shipped files in the cache (fetched again and
    checked when lost) and the image, re-created with the recorded ID when the engine lacks it."""
    archive = Archive(m.kernel.line, progress=progress)
    restore_files(m, archive, progress)
    if rt.image_id(m.image.id):
        progress.step(f"{m.image.id[:19]} already present")
        _tag(rt, m)
        return m.image.id
    built = build(rt, from_manifest(m, archive.sources_lines(), True, None), progress, keep_tmp)
    if built.id != m.image.id:
        rt.remove(built.id)
        raise ToolError(
            f"{m.name}: restored image {built.id[:19]} differs from recorded {m.image.id[:19]} "
            f"(rootfs {built.rootfs_sha256[:12]} vs {m.image.rootfs_sha256[:12]}, "
            f"tree {built.tree_sha256[:12]} vs {m.image.tree_sha256[:12]})"
        )
    _tag(rt, m)
    return built.id


def restore_files(m: Manifest, archive: Archive | None, progress: Progress, roles: Iterable[str] = ()) -> None:
    """[files.*] (or just `roles`) in the cache with their recorded sha256; a Debian kernel's lost
    files are fetched again, a vendor build dir's cannot be."""
    refs = {role: m.file_ref(role) for role in roles or m.files}
    missing = [role for role, ref in refs.items() if not ref.resolve().exists()]
    if missing and m.kernel.distro != "debian":
        m.file(missing[0])  # raises the one-line error with the way out
    if missing:
        archive = archive or Archive(m.kernel.line, progress=progress)
        debian.fetch(debian.resolve(f"{m.kernel.line}:{m.kernel.release}", archive), archive, progress)
    for role, ref in refs.items():  # the hash Manifest.file checks, remembered per (path, inode, size, mtime)
        if sha256_cached(ref.resolve()) != ref.sha256:
            raise ToolError(f"{ref.resolve()}: sha256 differs from env {m.name}'s files.{role}")


def _tag(rt: Runtime, m: Manifest) -> None:
    repo, tag = m.image.tag.rsplit(":", 1)
    rt.tag(m.image.id, repo, tag)


def export(rt: Runtime, m: Manifest, dest: Path) -> None:
    """The image as a docker-archive file plus the manifest, for hosts without a registry."""
    if rt.image_id(m.image.id) is None:
        raise UserError(f"{m.name}: image {m.image.id[:19]} not in the engine")
    tmp = dest.with_name(f".{dest.name}.tmp")
    rt.save(m.image.id, tmp)
    with tarfile.open(tmp, "a") as tar:
        data = m.to_toml().encode()
        info = tarfile.TarInfo("kgenv-manifest.toml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tmp.replace(dest)


def import_(rt: Runtime, archive: Path, force: bool = False) -> Manifest:
    """Load an exported env: the image must carry the manifest's ID; the manifest is then saved."""
    try:
        with tarfile.open(archive) as tar:
            data = tar.extractfile(tar.getmember("kgenv-manifest.toml"))
            if data is None:
                raise tarfile.TarError("kgenv-manifest.toml is not a regular file")
            m = manifest.parse(data.read().decode(), f"{archive}:kgenv-manifest.toml")
    except (tarfile.TarError, KeyError, OSError) as e:
        raise UserError(f"{archive}: not a kgenv env export ({e})") from None
    if manifest.path_of(m.name).exists() and not force:
        raise UserError(f"{manifest.path_of(m.name)}: env exists; use --force to replace it")
    got = rt.load(archive)
    if got != m.image.id:
        raise UserError(f"{archive}: image {got[:19]} is not the manifest's {m.image.id[:19]}")
    _tag(rt, m)
    manifest.save(m, force=force)
    return m


def as_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
