"""Small file-system helpers: atomic writes and the cache directory."""

import hashlib
import os
import tempfile
from pathlib import Path


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
        with os.fdopen(fd, "wb") as f:
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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()
