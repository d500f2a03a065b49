"""A kernel source tree as one deterministic tarball: sorted, fixed mtime/owner/modes, no build outputs."""

import os
import subprocess
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from kgenv.errors import RefusedError, ToolError, UserError
from kgenv.fsutil import sha256_file

VCS_DIRS = {".git", ".hg", ".svn"}
# Files whose change after the link would mean vmlinux was not built from this tree.
BUILD_INPUT_SUFFIXES = (".c", ".h", ".S", ".lds", ".rs")
BUILD_INPUT_NAMES = {"Makefile", "Kbuild", "Kconfig"}
TOP = "linux"  # the tarball's single top directory, whatever the tree was called on disk


@dataclass(frozen=True)
class SourceTarball:
    path: Path
    sha256: str
    files: int
    git_head: str  # "" when the tree is not a git work tree


def _inside(root: Path, link: Path) -> bool:
    """Does the symlink's target stay inside root (judged by its text, never by following it)?"""
    target = os.readlink(link)
    if os.path.isabs(target):
        return False
    resolved = os.path.normpath(os.path.join(os.path.dirname(link), target))
    return resolved == str(root) or resolved.startswith(str(root) + os.sep)


def listing(src: Path, exclude: AbstractSet[str] = frozenset()) -> list[str]:
    """Every entry under src (relative, sorted), without VCS dirs and the excluded subtrees.

    Refuses what could escape the tree once unpacked or mounted: symlinks pointing outside
    it and device/fifo/socket files.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        keep = []
        for d in sorted(dirnames):
            rel = os.path.normpath(os.path.join(rel_dir, d))
            if d in VCS_DIRS or rel in exclude:
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                filenames.append(d)  # a symlink to a directory is an entry, not a place to walk
                continue
            keep.append(d)
            out.append(rel)
        dirnames[:] = keep
        for f in filenames:
            path = Path(dirpath) / f
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if rel in exclude:
                continue
            if path.is_symlink():
                if not _inside(src, path):
                    raise RefusedError(f"{path}: symlink to {os.readlink(path)!r} leaves the source tree")
            elif not path.is_file():
                raise RefusedError(f"{path}: not a regular file, directory or symlink")
            out.append(rel)
    return sorted(out, key=lambda p: p.split(os.sep))


def git_sources(src: Path) -> set[str]:
    """Tracked plus untracked-but-not-ignored files of a git work tree (an in-tree build's sources).

    Only `ls-files` runs, with no user/system config and fsmonitor/hooks forced off, so
    nothing the repository configures is executed.
    """
    if not (src / ".git").is_dir() or (src / ".git").is_symlink():
        raise RefusedError(
            f"{src}: in-tree build outside a git work tree: cannot tell sources from "
            "build outputs (use an O= build, or a git tree)"
        )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "HOME": str(src),
    }
    cmd = [
        "git",
        "-c",
        "core.fsmonitor=false",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "safe.directory=*",
        f"--git-dir={src / '.git'}",
        f"--work-tree={src}",
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]
    try:
        r = subprocess.run(cmd, env=env, cwd=src, capture_output=True, check=True)
    except FileNotFoundError:
        raise ToolError("git: not installed (needed to tell sources from build outputs in an in-tree build)") from None
    except subprocess.CalledProcessError as e:
        raise ToolError(f"{src}: git ls-files failed: {e.stderr.decode(errors='replace').strip()[:200]}") from None
    return {os.path.normpath(p) for p in r.stdout.decode(errors="surrogateescape").split("\0") if p}


def filter_outputs(entries: list[str], kept_files: set[str], src: Path) -> list[str]:
    """Entries that are kept files, or directories holding one (in-tree builds)."""
    dirs = {os.path.dirname(f) for f in kept_files}
    for d in list(dirs):
        while d:
            d = os.path.dirname(d)
            dirs.add(d)
    return [e for e in entries if e in kept_files or (e in dirs and not (src / e).is_symlink())]


def modified_after(src: Path, entries: list[str], epoch: float) -> list[str]:
    """Build inputs changed after vmlinux was linked (the binary cannot have been built from them)."""
    late = []
    for e in entries:
        name = os.path.basename(e)
        if name in BUILD_INPUT_NAMES or name.endswith(BUILD_INPUT_SUFFIXES):
            st = os.lstat(src / e)
            if st.st_mtime > epoch + 1:
                late.append(e)
    return late


def git_head(src: Path) -> str:
    """The commit HEAD names, read from .git files (git itself is not run on an untrusted repo)."""
    git = src / ".git"
    if not git.is_dir() or git.is_symlink():
        return ""
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head if len(head) in (40, 64) else ""
        ref = head[5:]
        if ".." in ref.split("/"):
            return ""
        loose = git / ref
        if loose.is_file():
            return loose.read_text().strip()
        packed = git / "packed-refs"
        for line in packed.read_text().splitlines() if packed.is_file() else []:
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    except (OSError, UnicodeDecodeError):
        return ""
    return ""


def write(src: Path, entries: list[str], dest: Path, epoch: int) -> SourceTarball:
    """Tar the entries under one top directory: list order, fixed mtime/owner, git-like modes."""
    if not entries:
        raise UserError(f"{src}: no source files")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    names = "\0".join(["."] + [f"./{e}" for e in entries]) + "\0"
    try:
        r = subprocess.run(
            [
                "tar",
                "-C",
                str(src),
                "--null",
                "--no-recursion",
                "-T",
                "-",
                "--format=gnu",
                "--sort=none",
                f"--mtime=@{epoch}",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mode=u=rwX,go=rX",
                "--hard-dereference",
                f"--transform=s,^\\.,{TOP},S",
                "-cf",
                str(tmp),
            ],
            input=names.encode(errors="surrogateescape"),
            capture_output=True,
        )
    except BaseException:  # Ctrl-C while tar runs: no half tarball left in the cache
        tmp.unlink(missing_ok=True)
        raise
    if r.returncode:
        tmp.unlink(missing_ok=True)
        raise ToolError(f"{src}: cannot tar the source tree: {r.stderr.decode(errors='replace').strip()[:200]}")
    tmp.replace(dest)
    return SourceTarball(dest, sha256_file(dest), len(entries), git_head(src))
