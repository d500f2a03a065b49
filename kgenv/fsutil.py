"""Small file-system helpers: atomic writes, the cache directory, safe reads of what a container
wrote, and sha256 of large files remembered across runs."""

import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from kgenv.errors import ToolError

OUTPUT_MODE = 0o644  # what write_atomic leaves: outputs a farm serves over HTTP must be world-readable


def cache_dir() -> Path:
    """The download/tree cache: $KGENV_CACHE, else $XDG_CACHE_HOME/kgenv, else ~/.cache/kgenv."""
    env = os.environ.get("KGENV_CACHE")
    if env:
        root = Path(env)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kgenv"
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_atomic(path: Path, data: bytes | str, *, exclusive: bool = False) -> None:
    """Write via a temp file and rename, so readers never see half a file.

    With exclusive=True an existing file is an error (FileExistsError), checked
    at rename time with a hard link so two writers cannot both win.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # closed whatever fails below
            os.fchmod(fd, OUTPUT_MODE)  # mkstemp's 0600 would hide reports and modules from a web server
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    with open(path, "rb") as f:
        return sha256_stream(f, bufsize)


def sha256_stream(f: BinaryIO, bufsize: int = 1 << 20) -> str:
    """Hex sha256 of what is left to read in an open file."""
    h = hashlib.sha256()
    while chunk := f.read(bufsize):
        h.update(chunk)
    return h.hexdigest()


def is_sha256(v: object) -> bool:
    """A hex sha256 digest as kgenv records them (64 lower-case hex digits)."""
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def open_regular(path: Path, root: Path | None = None) -> int:
    """A read-only fd on `path`, refusing symlinks and anything but a regular file: for paths a
    container (or anyone but kgenv) could have written. With `root`, `path` lies under it and no
    component below root may be a symlink either (each is opened with O_NOFOLLOW). One-line
    ToolError otherwise; FileNotFoundError passes through for callers that expect absence."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO must not hang
    if root is None:
        parts, dir_fd = [str(path)], None
    else:
        try:
            rel = path.relative_to(root)
        except ValueError:
            raise ToolError(f"{path}: not inside {root}") from None
        if not rel.parts or ".." in rel.parts:
            raise ToolError(f"{path}: not a file inside {root}")
        parts = list(rel.parts)
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ToolError(f"{path}: {part} is a symlink or not a directory; refusing to follow it") from None
                raise
            if dir_fd is not None:
                os.close(dir_fd)
            dir_fd = nxt
        try:
            fd = os.open(parts[-1], flags, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ToolError(f"{path}: is a symlink; refusing to follow it") from None
            raise
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ToolError(f"{path}: not a regular file; refusing to read it")
    os.set_blocking(fd, True)
    return fd


def read_regular(path: Path, root: Path | None = None) -> bytes:
    """The bytes of a regular file that a container wrote, never through a symlink (see open_regular)."""
    with os.fdopen(open_regular(path, root), "rb") as f:
        return f.read()


def copy_regular(src: Path, dest: Path, root: Path | None = None) -> None:
    """Copy a container-written regular file to a host path kgenv owns (a fresh file, not followed)."""
    data = read_regular(src, root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, OUTPUT_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def sha256_cached(path: Path) -> str:
    """sha256_file remembered in the cache dir, keyed by (path, device, inode, size, mtime_ns,
    ctime_ns): a 630 MB vmlinux is hashed once, then each later stat that still matches is a hit.
    A changed file (any key part) is hashed again; a corrupt or foreign cache entry is ignored."""
    path = Path(path).absolute()
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ToolError(f"{path}: not a regular file")
    key = json.dumps([str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    entry = cache_dir() / "sha256" / (hashlib.sha256(key.encode()).hexdigest() + ".json")
    try:
        cached = json.loads(entry.read_text())
        if isinstance(cached, dict) and cached.get("key") == key and is_sha256(cached.get("sha256")):
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    digest = sha256_file(path)
    try:
        write_atomic(entry, json.dumps({"key": key, "sha256": digest}))
    except OSError:
        pass  # a read-only cache only costs the next run a re-hash
    return digest
