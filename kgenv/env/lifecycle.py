"""`kgenv envs`: list, show, verify (image self-check), restore, export and import env images."""

import hashlib
import io
import json
import os
import shlex
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from kgenv import manifest
from kgenv.distro import debian
from kgenv.distro.archive import Archive
from kgenv.errors import ToolError, UserError
from kgenv.fsutil import OUTPUT_MODE, sha256_cached
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


MANIFEST_MEMBER = "kgenv-manifest.toml"
MAX_JSON_MEMBER = 16 << 20  # manifest.json, the image config and the env manifest are a few kB


def export(rt: Runtime, m: Manifest, dest: Path) -> None:
    """The image as a docker-archive file plus the manifest, for hosts without a registry. Written
    beside dest and renamed: any failure (a full disk) leaves neither dest nor the temp file."""
    check_export_dest(dest)
    if rt.image_id(m.image.id) is None:
        raise UserError(f"{m.name}: image {m.image.id[:19]} not in the engine")
    try:
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"-o {dest}: cannot write there ({e.strerror or e})") from None
    os.close(fd)
    tmp = Path(name)
    try:
        rt.save(m.image.id, tmp)
        with tarfile.open(tmp, "a") as tar:
            data = m.to_toml().encode()
            info = tarfile.TarInfo(MANIFEST_MEMBER)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, OUTPUT_MODE)
        tmp.replace(dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"-o {dest}: cannot write the export ({e.strerror or e}); nothing was left there") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_export_dest(dest: Path) -> None:
    """-o of `envs export`, before the engine is asked anything: a file to be, in a directory."""
    if dest.is_dir():
        raise UserError(f"-o {dest}: is a directory")
    if not dest.parent.is_dir():
        raise UserError(f"-o {dest}: {dest.parent} is not a directory")


def import_(rt: Runtime, archive: Path, force: bool = False, m: Manifest | None = None) -> Manifest:
    """Load an exported env: the image must carry the manifest's ID; the manifest is then saved.
    `m`: what read_export(archive) already returned."""
    m = m or read_export(archive)
    if manifest.path_of(m.name).exists() and not force:
        raise UserError(f"{manifest.path_of(m.name)}: env exists; use --force to replace it")
    got = rt.load(archive)
    if got != m.image.id:
        raise UserError(f"{archive}: image {got[:19]} is not the manifest's {m.image.id[:19]}")
    _tag(rt, m)
    manifest.save(m, force=force)
    return m


def read_export(archive: Path) -> Manifest:
    """The manifest of an env export, once the file is seen to be one: a tar holding the manifest
    and a docker-archive of one image whose config hashes to the manifest's image ID (so neither a
    foreign tar nor another image reaches the engine). One-line UserError otherwise."""
    if not archive.is_file():  # a FIFO would block the tar reader
        raise UserError(f"{archive}: not a regular file")
    try:
        with tarfile.open(archive) as tar:
            text = _member(tar, archive, MANIFEST_MEMBER).decode()
            m = manifest.parse(text, f"{archive}:{MANIFEST_MEMBER}")
            _check_image(tar, archive, m)
    except UnicodeDecodeError:
        raise UserError(f"{archive}: {MANIFEST_MEMBER} is not UTF-8 text") from None
    except tarfile.ReadError:  # its message lists every compression tried, on five lines
        raise UserError(f"{archive}: not a kgenv env export (not a tar archive, or a truncated one)") from None
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{archive}: not a kgenv env export ({' '.join(str(e).split())})") from None
    return m


def _member(tar: tarfile.TarFile, archive: Path, name: str, limit: int | None = MAX_JSON_MEMBER) -> bytes:
    """A regular member's bytes (none with limit=None: it only has to be there)."""
    try:
        info = tar.getmember(name)
    except KeyError:
        raise UserError(f"{archive}: not a kgenv env export (no {name} in it)") from None
    if not info.isfile():
        raise UserError(f"{archive}: not a kgenv env export ({name} is not a regular file)")
    if limit is None:
        return b""
    if info.size > limit:
        raise UserError(f"{archive}: not a kgenv env export ({name} is {info.size} bytes)")
    f = tar.extractfile(info)
    return f.read() if f else b""


def _check_image(tar: tarfile.TarFile, archive: Path, m: Manifest) -> None:
    """docker save's manifest.json names one image: its config (whose sha256 is the image ID) and layers."""
    try:
        entries = json.loads(_member(tar, archive, "manifest.json"))
    except ValueError:
        entries = None
    entry = entries[0] if isinstance(entries, list) and len(entries) == 1 else None
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("Config"), str)
        and isinstance(entry.get("Layers"), list)
        and all(isinstance(x, str) for x in entry["Layers"])
    ):
        raise UserError(f"{archive}: not a kgenv env export (its manifest.json does not describe one image)")
    digest = "sha256:" + hashlib.sha256(_member(tar, archive, entry["Config"])).hexdigest()
    if digest != m.image.id:
        raise UserError(f"{archive}: its image is {digest[:19]}, not the manifest's {m.image.id[:19]}")
    for layer in entry["Layers"]:
        _member(tar, archive, layer, limit=None)


def as_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
