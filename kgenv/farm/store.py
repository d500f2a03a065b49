"""The result cache: finished jobs by key, committed whole by rename, copied into a plan's OUTDIR."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kgenv.fsutil import cache_dir, write_atomic

ATTEMPT = "attempt.json"


@dataclass(frozen=True)
class Attempt:
    """How a run went, as the engine saw it."""

    exit_code: int
    worker: str
    engine: str
    seconds: float
    finished: str  # UTC, ISO 8601

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Store:
    """results/<key>/ is complete or absent; work happens in tmp/<key>.<pid>.* and is renamed in."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_dir() / "farm"
        self.results = self.root / "results"
        self.tmp = self.root / "tmp"
        for d in (self.results, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._reap()

    def path(self, key: str) -> Path:
        return self.results / key

    def has(self, key: str) -> bool:
        return (self.path(key) / ATTEMPT).is_file()

    def workdir(self, key: str) -> Path:
        """A fresh private directory for one run of the job."""
        return Path(tempfile.mkdtemp(prefix=f"{key[:16]}.{os.getpid()}.", dir=self.tmp))

    def commit(self, key: str, work: Path, attempt: Attempt) -> Path:
        """Move a finished run in as the result of `key`; a concurrent identical result wins quietly."""
        write_atomic(work / ATTEMPT, json.dumps(attempt.to_dict(), indent=1, sort_keys=True))
        dest = self.path(key)
        try:
            work.rename(dest)
        except OSError:
            if not self.has(key):
                raise
            shutil.rmtree(work, ignore_errors=True)
        return dest

    def attempt(self, key: str) -> Attempt:
        return Attempt(**json.loads((self.path(key) / ATTEMPT).read_text()))

    def discard(self, work: Path) -> None:
        shutil.rmtree(work, ignore_errors=True)

    def _reap(self) -> None:
        """Remove work dirs of runs whose process is gone (killed with -9, power loss)."""
        for d in self.tmp.iterdir():
            parts = d.name.split(".")
            if len(parts) >= 2 and parts[1].isdigit() and not _alive(int(parts[1])):
                shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def place(src: Path, dest: Path, extra: dict[str, bytes] | None = None) -> None:
    """Make dest a copy of src (hard links where possible) plus extra files, swapped in by rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for f in sorted(src.rglob("*")):
            target = tmp / f.relative_to(src)
            if f.is_dir():
                target.mkdir(exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)
        _swap(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(new: Path, dest: Path) -> None:
    """Replace dest by new; a reader sees the old or the new directory, never a mix."""
    if not dest.exists():
        new.rename(dest)
        return
    old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
    dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
