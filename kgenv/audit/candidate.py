"""Candidate toolchains: the env image, a derived image with a Debian compiler, any image, another suite, the host."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from kgenv.audit import foreign
from kgenv.audit.records import Candidate
from kgenv.errors import ToolError, UserError
from kgenv.fsutil import cache_dir
from kgenv.image.derive import PKG_RE, with_packages
from kgenv.manifest import Manifest
from kgenv.runtime.base import Mount, RunResult, Runtime

OUT = "/kgenv-out"


class DockerRunner:
    """Runs audit scripts in a throwaway container of the candidate image, no network."""

    def __init__(self, rt: Runtime, image: str, m: Manifest):
        self.rt, self.image, self.m = rt, image, m

    def run(self, script: str, outdir: Path | None = None, progress=None) -> RunResult:
        mounts = [Mount(outdir.resolve(), OUT, read_only=False)] if outdir else []
        return self.rt.run(
            self.image,
            ["bash", "-c", script],
            mounts,
            env={"KGENV_OUT": OUT},
            workdir=self.m.kernel.srctree,
            progress=progress,
        )

    def close(self) -> None:
        pass


class HostRunner:
    """Runs audit scripts on this machine, in a private copy of the env's prepared tree.

    The copy is unpacked from the env image's tree layer for each audit (compiles and
    olddefconfig write into it), and removed afterwards unless kept.
    """

    def __init__(self, rt: Runtime, m: Manifest, progress=None, keep: bool = False):
        self.m, self.keep, self.progress = m, keep, progress
        self.work = Path(tempfile.mkdtemp(prefix=f"audit-host-{m.name}.", dir=cache_dir()))
        layer_dir = cache_dir() / "layers"
        layer_dir.mkdir(exist_ok=True)
        layer = foreign.tree_layer(rt, m, layer_dir, progress)
        if progress:
            progress.step(f"unpack the prepared tree into {self.work}")
        r = subprocess.run(["tar", "-xf", str(layer), "-C", str(self.work)], capture_output=True, text=True)
        if r.returncode:
            raise ToolError(f"{layer}: cannot unpack: {r.stderr.strip()[:200]}")
        self.tree = self.work / m.kernel.srctree.lstrip("/")

    def run(self, script: str, outdir: Path | None = None, progress=None) -> RunResult:
        env = {**os.environ, "KGENV_OUT": str(outdir.resolve()) if outdir else "/nonexistent"}
        r = subprocess.run(["bash", "-c", script], cwd=self.tree, env=env, capture_output=True, text=True)
        return RunResult(r.returncode, r.stdout + r.stderr)

    def close(self) -> None:
        if self.keep:
            if self.progress:
                self.progress.step(f"kept the host tree {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def _image_cc(rt: Runtime, image: str, m: Manifest) -> str:
    """The compiler an image says it carries (label org.kgenv.cc), else the env's."""
    return rt.labels(image).get("org.kgenv.cc", "") or m.make.get("CC", "gcc")


def resolve(
    rt: Runtime, m: Manifest, toolchain: str | None, cc: str | None, progress=None, keep_tmp: bool = False
) -> tuple[Candidate, DockerRunner | HostRunner]:
    """(candidate record, runner) for the --toolchain / --cc options."""
    env_cc = m.make.get("CC", "gcc")
    if cc and toolchain:
        raise UserError("--cc installs a compiler into the env image: give it without --toolchain")
    if cc:
        if not PKG_RE.match(cc):
            raise UserError(f"{cc}: not a Debian package name")
        image = with_packages(rt, m, [cc], progress)
        prog = cc.split("=", 1)[0]
        return Candidate(
            "derived", f"{prog} (Debian package in the env image)", image, prog, {"CC": prog}
        ), DockerRunner(rt, image, m)
    if not toolchain or toolchain == "env":
        if rt.image_id(m.image.id) is None:
            raise UserError(f"{m.name}: image {m.image.id[:19]} not in the engine (kgenv envs restore {m.name})")
        return Candidate("env", "the env image", m.image.id, env_cc), DockerRunner(rt, m.image.id, m)
    if toolchain == "host":
        prog = env_cc if shutil.which(env_cc) else "gcc"
        if not shutil.which(prog):
            raise UserError("--toolchain host: no gcc on PATH")
        make = {"CC": prog, "HOSTCC": prog} if prog != env_cc else {}
        return Candidate("host", f"this machine's {prog}", "", prog, make), HostRunner(rt, m, progress, keep_tmp)
    kind, _, ref = toolchain.partition(":")
    if kind == "image" and ref:
        image = rt.image_id(ref) or ""
        if not image:
            raise UserError(f"--toolchain {toolchain}: no such image in the engine")
        prog = _image_cc(rt, image, m)
        make = {"CC": prog, "HOSTCC": prog} if prog != env_cc else {}
        return Candidate("image", f"image {image[7:19]} ({prog})", image, prog, make), DockerRunner(rt, image, m)
    if kind == "debian" and ref:
        suite, prog = foreign.parse_spec(ref)
        image = foreign.candidate_image(rt, m, ref, progress)
        return (
            Candidate(
                "foreign", f"{prog} of Debian {suite} (image {image[7:19]})", image, prog, {"CC": prog, "HOSTCC": prog}
            ),
            DockerRunner(rt, image, m),
        )
    raise UserError(f"--toolchain {toolchain}: expected env, host, image:ID or debian:SUITE/COMPILER")
