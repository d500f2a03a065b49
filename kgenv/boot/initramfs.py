"""A pure-Python writer for "newc" cpio archives, the format the kernel unpacks as initramfs."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a path, its mode (type bits included) and its bytes."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    fields = (
        ino,
        entry.mode,
        0,
        0,  # ino, mode, uid, gid
        2 if stat.S_ISDIR(entry.mode) else 1,
        0,  # nlink, mtime 0: reproducible
        len(entry.data),
        0,
        0,  # filesize, devmajor, devminor
        entry.rdev[0],
        entry.rdev[1],
        len(name) + 1,  # rdevmajor, rdevminor, namesize
        0,  # check: unused by newc
    )
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def _member(ino: int, entry: Entry) -> bytes:
    name = entry.path.encode()
    head = _header(ino, entry, name) + name + b"\0"
    return head + _pad4(len(head)) + entry.data + _pad4(len(entry.data))


class Archive:
    """Collects members in order; parents are added as directories when missing."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __contains__(self, path: str) -> bool:
        return _norm(path) in self._entries

    @property
    def paths(self) -> list[str]:
        return list(self._entries)

    def _add(self, path: str, mode: int, data: bytes = b"", rdev=(0, 0)) -> None:
        path = _norm(path)
        parent = str(PurePosixPath(path).parent)
        if parent != "." and parent not in self._entries:
            self.add_dir(parent)
        self._entries[path] = Entry(path, mode, data, rdev)

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._add(path, stat.S_IFDIR | mode)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(path, stat.S_IFREG | mode, data)

    def add_symlink(self, path: str, target: str) -> None:
        self._add(path, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        # A device node in the archive needs no root: the kernel creates it on unpack.
        self._add(path, stat.S_IFCHR | mode, rdev=(major, minor))

    def to_bytes(self) -> bytes:
        parts = [_member(ino, e) for ino, e in enumerate(self._entries.values(), start=1)]
        parts.append(_member(0, Entry(TRAILER, 0)))
        return b"".join(parts)

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.write_bytes(self.to_bytes())
        return path


def _norm(path: str) -> str:
    """Member names are relative ("bin/sh"), as the kernel and cpio expect."""
    norm = str(PurePosixPath("/", path)).lstrip("/")
    if not norm or ".." in PurePosixPath(norm).parts:
        raise ValueError(f"bad archive path: {path!r}")
    return norm
