"""Write a `docker load` archive whose image ID depends only on its layers and fixed config."""

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

from kgenv.fsutil import sha256_file


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def image_config(diff_ids: list[str], epoch: int, env: dict[str, str], labels: dict[str, str], workdir: str) -> bytes:
    """The image config; its sha256 is the image ID, so nothing in it may vary between runs."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    return _canonical(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {
                "Env": [f"{k}={v}" for k, v in env.items()],
                "Labels": labels,
                "WorkingDir": workdir,
                "Cmd": ["/bin/bash"],
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": created, "created_by": "kgenv"} for _ in diff_ids],
        }
    )


def write(dest: Path, layers: list[Path], epoch: int, env: dict[str, str], labels: dict[str, str], workdir: str) -> str:
    """Write dest (a docker-archive tar) and return the image ID it will load as."""
    diff_ids = [f"sha256:{sha256_file(p)}" for p in layers]
    config = image_config(diff_ids, epoch, env, labels, workdir)
    image_id = hashlib.sha256(config).hexdigest()
    names = [f"{d.split(':')[1]}/layer.tar" for d in diff_ids]
    manifest = _canonical([{"Config": f"{image_id}.json", "RepoTags": None, "Layers": names}])
    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
        _add_bytes(tar, f"{image_id}.json", config, epoch)
        for layer, name in zip(layers, names, strict=True):
            info = tar.gettarinfo(str(layer), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
            with open(layer, "rb") as f:
                tar.addfile(info, f)
        _add_bytes(tar, "manifest.json", manifest, epoch)
    return f"sha256:{image_id}"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), epoch, 0o644
    tar.addfile(info, io.BytesIO(data))
