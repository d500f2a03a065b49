"""`kgenv snapshot BUILD_DIR`: an env from a vendor's own finished kernel build directory.

The same env as the Debian path gives: the toolchain read from the binary and pinned to exact
packages of a Debian line, the source tree tarred deterministically into the cache, and the
image built by image.build with the prepared tree at the build's own source path. The build's
`.*.cmd` files are then compared with the ones Kbuild writes in the image for the same targets.
"""

import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path, PurePosixPath

from kgenv import manifest
from kgenv.distro import debian
from kgenv.distro.archive import Archive
from kgenv.env import buildtree, kbuildcmd, sourcetree, toolchain
from kgenv.env.draft import commit
from kgenv.env.draft import draft as new_draft
from kgenv.env.fingerprint import Fingerprint, config_sha256, fingerprint
from kgenv.errors import RefusedError, UserError
from kgenv.fsutil import cache_dir, read_regular, sha256_file
from kgenv.image import tree as imagetree
from kgenv.image.build import Built, build, from_manifest
from kgenv.manifest import FileRef, Kernel, Manifest
from kgenv.progress import Progress
from kgenv.runtime.base import Mount, Runtime

# Debian release of a "+debNNuM" package version.
DEBIAN_RELEASES = {"10": "buster", "11": "bullseye", "12": "bookworm", "13": "trixie", "14": "forky"}
# An env's tree must not land on the image's own system directories.
SYSTEM_DIRS = (
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/include",
    "/usr/share",
    "/var/lib",
)
RELOCATED_OBJTREE = "kgenv-build"


def line_of(cc_version_text: str, line: str | None) -> str:
    """The Debian line whose archive holds the compiler: --line, else the +debNN of its version,
    else the host's own release."""
    if line:
        if line not in debian.LINES:
            raise UserError(f"--line {line}: not a known Debian release ({', '.join(debian.LINES)})")
        return line
    m = re.search(r"\+deb(\d+)u", toolchain.CompilerId.parse(cc_version_text).package_version)
    if m and m.group(1) in DEBIAN_RELEASES:
        return DEBIAN_RELEASES[m.group(1)]
    host = (
        dict(re.findall(r"^(\w+)=\"?([^\"\n]*)\"?$", Path("/etc/os-release").read_text(), re.M))
        if Path("/etc/os-release").exists()
        else {}
    )
    if host.get("VERSION_CODENAME") in debian.LINES:
        return host["VERSION_CODENAME"]
    raise UserError(f"{cc_version_text}: cannot tell which Debian release ships this compiler; pass --line")


def require_exact_compiler(fp: Fingerprint, archive: Archive, vmlinux: Path) -> None:
    """Refuse unless the archive has the very compiler build that made the kernel."""
    cc = toolchain.CompilerId.parse(fp.cc_version_text)
    if cc.vendor != "Debian" or not cc.package_version:
        raise RefusedError(
            f"{vmlinux}: built by {fp.cc_version_text!r}, not a Debian compiler build; "
            f"its exact build cannot come from the {archive.line} archive"
        )
    name = cc.program if re.fullmatch(r"gcc-\d+", cc.program) else f"gcc-{int(fp.config['GCC_VERSION']) // 10000}"
    have = [p.version for p in archive.index().get(name, [])]
    if cc.package_version not in have:
        raise RefusedError(
            f"{name}={cc.package_version}: the compiler build of {vmlinux} is not in "
            f"{archive.line} at {archive.mirror} (it has {', '.join(have) or 'no ' + name})"
        )


def _safe_srctree(path: str, where: Path) -> str:
    norm = str(PurePosixPath(path))
    if (
        not path.startswith("/")
        or ".." in PurePosixPath(path).parts
        or norm.count("/") < 2
        or any(norm == d or norm.startswith(d + "/") for d in SYSTEM_DIRS)
    ):
        raise RefusedError(f"{where}: source path {path!r} cannot be the tree's place in the env image")
    return norm


def tree_paths(tree: buildtree.BuildTree, fp: Fingerprint, texts: dict[str, str]) -> tuple[str, str]:
    """(srctree, objtree): the build's own source path, and its O= dir relative to it.

    The source path comes from DWARF, else from the .cmd files' `source_` lines, else from
    the `source` symlink (all three record the path at build time, wherever the tree is now).
    An O= dir outside the source tree is placed at kgenv-build inside it: Kbuild addresses
    objtree files relatively, so only debug-info paths could tell.
    """
    from_cmd = next((s for s in map(kbuildcmd.srctree, texts.values()) if s), "")
    if fp.srctree and from_cmd and fp.srctree != from_cmd:
        raise RefusedError(f"{tree.vmlinux}: DWARF says the source was at {fp.srctree}, the .cmd files say {from_cmd}")
    if tree.in_tree:
        return _safe_srctree(fp.srctree or from_cmd or str(tree.root), tree.root), ""
    srctree = _safe_srctree(fp.srctree or from_cmd or tree.source_link, tree.root / "source")
    if fp.srctree and fp.objtree and not fp.objtree.startswith(".."):
        objtree = fp.objtree
    elif tree.root.is_relative_to(tree.source):
        objtree = str(tree.root.relative_to(tree.source))
    else:
        objtree = RELOCATED_OBJTREE
    parts = PurePosixPath(objtree).parts
    if objtree.startswith("/") or ".." in parts or (tree.source / parts[0]).is_symlink():
        raise RefusedError(f"{tree.root}: O= directory {objtree!r} cannot be placed inside the source tree")
    return srctree, objtree


def kernel_version(src: Path) -> str:
    """VERSION.PATCHLEVEL.SUBLEVEL+EXTRAVERSION of the source's top Makefile."""
    text = (src / "Makefile").read_text(errors="replace")
    v = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION) = ?(\S*)$", text, re.M))
    return f"{v.get('VERSION', '?')}.{v.get('PATCHLEVEL', '?')}.{v.get('SUBLEVEL', '0')}{v.get('EXTRAVERSION', '')}"


def source_tarball(tree: buildtree.BuildTree, store: Path, epoch: int, progress) -> sourcetree.SourceTarball:
    """The source tree as a deterministic tar in the cache (build outputs left out)."""
    src = tree.source
    exclude = set()
    if not tree.in_tree and tree.root.is_relative_to(src):
        exclude.add(str(tree.root.relative_to(src)))
    elif not tree.in_tree:
        for leftover in (".config", "include/config"):
            if os.path.lexists(src / leftover):
                raise RefusedError(f"{src / leftover}: the source tree of an O= build is not clean")
    progress.step(f"list {src}")
    entries = sourcetree.listing(src, exclude)
    if tree.in_tree:
        entries = sourcetree.filter_outputs(entries, sourcetree.git_sources(src), src)
    late = sourcetree.modified_after(src, entries, tree.vmlinux.stat().st_mtime)
    if late:
        raise RefusedError(
            f"{src / late[0]}: changed after {tree.vmlinux} was linked ({len(late)} build inputs newer than the kernel)"
        )
    progress.step(f"tar {len(entries)} source entries")
    tmp = store / ".source.tar"
    tarball = sourcetree.write(src, entries, tmp, epoch)
    dest = store / f"source-{tarball.sha256[:16]}.tar"
    tmp.replace(dest)
    return replace(tarball, path=dest)


def _store(path: Path, store: Path, role: str) -> tuple[Path, str]:
    """A copy of a build-dir file in the cache, named by content (an env keeps what it recorded)."""
    digest = sha256_file(path)
    dest = store / f"{role}-{digest[:16]}"
    if not dest.exists():
        tmp = store / f".{role}.tmp"
        try:
            shutil.copyfile(path, tmp)
            tmp.replace(dest)
        except BaseException:  # a full cache or Ctrl-C leaves no half copy
            tmp.unlink(missing_ok=True)
            raise
    return dest, digest


def _ref(path: Path, digest: str, origin: Path) -> FileRef:
    return FileRef(str(path.relative_to(cache_dir())), digest, f"build-dir:{origin}")


def image_cmds(rt: Runtime, image_id: str, srctree: str, objtree: str, script: str = "") -> dict[str, str]:
    """The commands of the `.*.cmd` files in the image's prepared O= dir (after an optional script).

    They come back through a mounted file, not the log stream (which may split long lines).
    """
    out_dir = f"{srctree}/{objtree}" if objtree else srctree
    with tempfile.TemporaryDirectory(prefix="kgenv-cmds.", dir=cache_dir()) as tmp:
        r = rt.run(
            image_id,
            [
                "bash",
                "-c",
                f"{script}cd {shlex.quote(out_dir)} && find . -name '.*.cmd' -print0 "
                "| sort -z | xargs -0 -r grep -HZ -E '^(saved)?cmd_' > /kgenv-out/cmds",
            ],
            [Mount(Path(tmp), "/kgenv-out", read_only=False)],
            workdir=srctree,
        )
        if r.exit_code:
            return {}
        text = read_regular(Path(tmp) / "cmds", root=Path(tmp)).decode(errors="replace")  # container-written
    cmds = {}
    for line in text.split("\n"):
        name, sep, rest = line.partition("\0")
        if sep and (cmd := kbuildcmd.command(rest)):
            cmds[os.path.normpath(name)] = cmd
    return cmds


def marked_cmds(rt: Runtime, image_id: str, make: dict[str, str], srctree: str, objtree: str) -> dict[str, str]:
    """The image's commands after re-preparing with KCFLAGS set to a marker (a throwaway container)."""
    marked = {**make, "KCFLAGS": kbuildcmd.KCFLAGS_MARK}
    prep = shlex.join(imagetree.make_command(marked, objtree, "modules_prepare"))
    return image_cmds(rt, image_id, srctree, objtree, f"cd {shlex.quote(srctree)} && {prep} >/dev/null 2>&1 && ")


def parse_make_vars(items) -> dict[str, str]:
    """--make VAR=VALUE options as a dict; UserError for anything else."""
    out = {}
    for item in items:
        var, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            raise UserError(f"--make {item!r}: expected VAR=VALUE")
        out[var] = value
    return out


def snapshot_build_dir(
    build_dir: Path,
    make_runtime: Callable[[], Runtime],
    name: str | None,
    line: str | None,
    force: bool,
    progress: Progress,
    keep_tmp: bool = False,
    make_overrides: dict[str, str] | None = None,
) -> Manifest:
    """The env of a finished build dir. The runtime is made only after every check of the input,
    so bad input never needs an engine."""
    tree = buildtree.open_tree(build_dir)
    progress.step(f"check {tree.root}")
    buildtree.check(tree)
    fp = fingerprint(tree.vmlinux, tree.config, tree.generated, tree.kernelvariables)
    name = name or f"vendor-{fp.release}"
    if manifest.path_of(name).exists() and not force:
        raise UserError(f"{manifest.path_of(name)}: env exists; use --force to replace it")
    texts = {rel: kbuildcmd.head(p) for rel, p in kbuildcmd.find(tree.root).items()}
    vendor_cmds = {rel: c for rel, t in texts.items() if (c := kbuildcmd.command(t))}
    srctree, objtree = tree_paths(tree, fp, texts)
    make = dict(fp.make)
    if cc := kbuildcmd.kernel_cc(vendor_cmds):
        make["CC"] = make["HOSTCC"] = cc
    make.update(make_overrides or {})

    line = line_of(fp.cc_version_text, line)
    archive = Archive(line, progress=progress)
    require_exact_compiler(fp, archive, tree.vmlinux)
    pins = toolchain.resolve(fp, archive)

    store = cache_dir() / "vendor" / fp.build_id
    store.mkdir(parents=True, exist_ok=True)
    epoch = int(tree.vmlinux.stat().st_mtime)
    source = source_tarball(tree, store, epoch, progress)
    progress.step("copy the build's files into the cache")
    files = {
        "source": FileRef(
            str(source.path.relative_to(cache_dir())),
            source.sha256,
            f"tree:{tree.source}" + (f"@{source.git_head}" if source.git_head else ""),
        )
    }
    for role, path in (
        ("vmlinux", tree.vmlinux),
        ("config", tree.config),
        ("symvers", tree.symvers),
        ("vmlinuz", tree.bzimage),
    ):
        if path:
            files[role] = _ref(*_store(path, store, role), path)
    kernel = Kernel(
        distro="vendor",
        line=line,
        release=fp.release,
        version=kernel_version(tree.source),
        build_id=fp.build_id,
        banner=fp.banner,
        srctree=srctree,
        objtree=objtree,
        source_package=files["source"].package,
        source_sha256=source.sha256,
        config_sha256=config_sha256(tree.config),
        source_date_epoch=epoch,
    )
    draft = new_draft(name, kernel, fp, make, pins, files, {"build_dir": str(tree.root)})
    shared = shared_packages(draft, archive)
    if shared:
        progress.step(f"same toolchain as env {shared[0]}: its package set, so the images share layers")
    draft = replace(draft, packages=shared[1] if shared else {})
    rt = make_runtime()
    built, draft = build_checked(rt, draft, archive, tree, vendor_cmds, progress, keep_tmp)
    return commit(rt, draft, built, force, progress)


def shared_packages(draft: Manifest, archive: Archive) -> tuple[str, dict[str, str]] | None:
    """(env, packages) of an existing env with this suite, package set and toolchain, if the archive
    still has every one of its versions: installing those gives a byte-identical rootfs layer."""
    index = archive.index()
    for other in manifest.names():
        try:
            m = manifest.load(other)
        except UserError:
            continue
        if (
            m.name != draft.name
            and m.image.suite == draft.image.suite
            and m.image.include == draft.image.include
            and m.toolchain == draft.toolchain
            and m.packages
            and all(any(p.version == v for p in index.get(n, [])) for n, v in m.packages.items())
        ):
            return m.name, dict(m.packages)
    return None


def build_checked(
    rt: Runtime,
    draft: Manifest,
    archive: Archive,
    tree: buildtree.BuildTree,
    vendor_cmds: dict[str, str],
    progress,
    keep_tmp: bool,
) -> tuple[Built, Manifest]:
    """Build the image; then the build's .cmd files must match the image's for the same targets.

    A kernel-compile difference is read as KCFLAGS (derive_kcflags) and the image rebuilt
    once with it; any other kernel-compile difference is a refusal. Host-tool commands (HOSTCC,
    HOSTCFLAGS) never reach kernel code and are only reported. A refused or failed image is removed.
    """
    for attempt in (1, 2):
        built = build(
            rt, from_manifest(draft, archive.sources_lines(), bool(draft.packages), tree.generated), progress, keep_tmp
        )
        try:
            note, kcflags = _check_cmds(rt, built, draft, tree, vendor_cmds, progress, last=attempt == 2)
        except BaseException:
            rt.remove(built.id)
            raise
        if kcflags is None:
            return built, replace(draft, fingerprint={**draft.fingerprint, "kbuild_cmds": note})
        rt.remove(built.id)
        make = {k: v for k, v in draft.make.items() if k != "KCFLAGS"}
        draft = replace(draft, make={**make, **({"KCFLAGS": kcflags} if kcflags else {})})
        progress.step(f"KCFLAGS={kcflags!r}; rebuilding the image")
    raise AssertionError("unreachable")


def _check_cmds(
    rt: Runtime,
    built: Built,
    draft: Manifest,
    tree: buildtree.BuildTree,
    vendor_cmds: dict[str, str],
    progress,
    last: bool,
) -> tuple[str, str | None]:
    """(note for the manifest, None) when the commands match; ("", KCFLAGS) when KCFLAGS explain them."""
    k = draft.kernel
    if not vendor_cmds:
        progress.step(f"{tree.root}: no .cmd files; make-line flags unchecked")
        return "none", None
    progress.step("compare the build's .cmd files with the image's")
    n, diffs = kbuildcmd.compare(vendor_cmds, image_cmds(rt, built.id, k.srctree, k.objtree))
    kernel = [d for d in diffs if d.kernel]
    if not kernel:
        if diffs:
            progress.step(
                f"host-tool commands differ (no effect on kernel code), e.g. {diffs[0].file}: {diffs[0].detail}"
            )
        return f"{n} compared, {len(diffs)} host-tool differences", None
    first = kernel[0]
    where = str(tree.root / first.file)
    if last:
        raise RefusedError(f"{where}: still differs after rebuilding with KCFLAGS: {first.detail}")
    progress.step(f"{first.file}: {first.detail}; reading KCFLAGS off it")
    marked = marked_cmds(rt, built.id, draft.make, k.srctree, k.objtree)
    if first.file not in marked:
        raise RefusedError(f"{where}: differs ({first.detail}) and the env cannot rebuild it")
    return "", kbuildcmd.derive_kcflags(vendor_cmds[first.file], marked[first.file], where)
