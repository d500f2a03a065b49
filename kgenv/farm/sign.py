"""Optional module signing with a key given at run time, by the kernel's own scripts/sign-file in the env image.

The key is bind-mounted read-only into a throw-away container: it is never copied into an image,
an OUTDIR, a report or a log. Reports name the certificate by its sha256 only.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kgenv.errors import ToolError, UserError
from kgenv.fsutil import read_regular, sha256_file, write_atomic
from kgenv.manifest import Manifest
from kgenv.runtime.base import Mount, Runtime

MAGIC = b"~Module signature appended~\n"
KEY_DIR = "/run/kgenv-sign"


@dataclass(frozen=True)
class SigningKey:
    key: Path  # PEM private key
    cert: Path  # X.509 certificate, PEM or DER
    hash: str = "sha256"

    def __post_init__(self):
        for what, p in (("--sign-key", self.key), ("--sign-cert", self.cert)):
            if not Path(p).is_file():
                raise UserError(f"{p}: {what}: no such file")
        if self.hash not in ("sha256", "sha384", "sha512"):
            raise UserError(f"{self.hash}: unsupported signing hash (sha256, sha384, sha512)")

    @property
    def cert_sha256(self) -> str:
        return sha256_file(self.cert)


def sign_file(m: Manifest) -> str:
    """scripts/sign-file of the env's prepared tree (built with the tree's host tools)."""
    return str(PurePosixPath(m.kernel.srctree) / m.kernel.objtree / "scripts" / "sign-file")


def sign(rt: Runtime, m: Manifest, module: Path, dest: Path, key: SigningKey) -> str:
    """Write a signed copy of `module` to dest; return its sha256. The input is left as it was."""
    with tempfile.TemporaryDirectory(prefix="kgenv-sign-") as out:
        mounts = [
            Mount(Path(key.key).resolve(), f"{KEY_DIR}/key.pem"),
            Mount(Path(key.cert).resolve(), f"{KEY_DIR}/cert"),
            Mount(module.resolve(), "/in/module.ko"),
            Mount(Path(out), "/out", read_only=False),
        ]
        script = (
            f"cp /in/module.ko /out/module.ko && {shlex.quote(sign_file(m))} {key.hash} "
            f"{KEY_DIR}/key.pem {KEY_DIR}/cert /out/module.ko"
        )
        env = {"KBUILD_SIGN_PIN": os.environ["KBUILD_SIGN_PIN"]} if "KBUILD_SIGN_PIN" in os.environ else {}
        r = rt.run(m.image.id, ["bash", "-c", script], mounts=mounts, env=env)
        signed = Path(out) / "module.ko"
        data = read_regular(signed, root=Path(out)) if not r.exit_code and signed.exists() else b""  # never a symlink
        if r.exit_code or not data.endswith(MAGIC):
            raise ToolError(f"{module}: sign-file failed (exit {r.exit_code}): {r.output.strip()[-300:]}")
        write_atomic(dest, data)
    return sha256_file(dest)
