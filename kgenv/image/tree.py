"""The prepared kernel tree: source + recorded config + `olddefconfig` (no change) + modules_prepare."""

import filecmp
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from kgenv.errors import RefusedError, ToolError
from kgenv.runtime.base import Mount, Runtime

CONFIG_CHANGED = 3  # exit code of the in-container script when olddefconfig changed the config


def make_command(fp_make: dict[str, str], objtree: str, *targets: str, jobs: int | None = None) -> list[str]:
    """The make line of the original build, for the given targets."""
    cmd = ["make", f"-j{jobs or os.cpu_count() or 1}"]
    if objtree:
        cmd.append(f"O={objtree}")
    return cmd + [f"{k}={v}" for k, v in fp_make.items()] + list(targets)


def config_stable(fp_make: dict[str, str], objtree: str) -> str:
    """A shell snippet: run olddefconfig; exit 0 if the config is unchanged, CONFIG_CHANGED (with the diff) if not."""
    o = shlex.quote(objtree or ".")
    return (
        f"(cp {o}/.config /tmp/recorded.config && "
        f"{shlex.join(make_command(fp_make, objtree, 'olddefconfig', jobs=1))} >/tmp/olddefconfig.log 2>&1 && "
        f"if ! cmp -s /tmp/recorded.config {o}/.config; then "
        f"diff /tmp/recorded.config {o}/.config | head -20; exit {CONFIG_CHANGED}; fi)"
    )


def unpack_source(tarball: Path, stage: Path, srctree: str) -> Path:
    """Unpack the source tarball so the tree sits at the recorded srctree path under stage."""
    dest = stage / srctree.lstrip("/")
    tmp = stage / ".unpack"
    tmp.mkdir(parents=True)
    r = subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp)], capture_output=True, text=True)
    if r.returncode:
        raise ToolError(f"{tarball}: cannot unpack: {r.stderr.strip()[:200]}")
    (top,) = list(tmp.iterdir())
    dest.parent.mkdir(parents=True, exist_ok=True)
    top.rename(dest)
    tmp.rmdir()
    return dest


def prepare(
    rt: Runtime,
    base_image: str,
    tree: Path,
    srctree: str,
    objtree: str,
    config: Path,
    symvers: Path | None,
    fp_make: dict[str, str],
    progress,
) -> None:
    """Run olddefconfig and modules_prepare in the base image, with no network."""
    out = tree / objtree
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, out / ".config")
    script = (
        "set -e\n"
        + config_stable(fp_make, objtree)
        + "\n"
        + shlex.join(make_command(fp_make, objtree, "modules_prepare"))
    )
    progress.step("prepare kernel tree (olddefconfig, modules_prepare)")
    r = rt.run(
        base_image, ["bash", "-c", script], [Mount(tree, srctree, read_only=False)], workdir=srctree, progress=progress
    )
    if r.exit_code == CONFIG_CHANGED:
        raise RefusedError(f"{config}: olddefconfig changes the recorded config in this toolchain:\n{r.output[-1500:]}")
    if r.exit_code:
        raise ToolError(f"modules_prepare failed in the env image:\n{r.output[-2000:]}")
    if symvers:
        shutil.copyfile(symvers, out / "Module.symvers")


def check_generated(tree_out: Path, shipped: Path) -> list[str]:
    """Generated headers that differ from the shipped headers package (a faithful prepare has none)."""
    differ = []
    for name in ("autoconf.h", "bounds.h", "asm-offsets.h", "timeconst.h", "utsrelease.h"):
        a, b = tree_out / "include" / "generated" / name, shipped / name
        if a.exists() and b.exists() and not filecmp.cmp(a, b, shallow=False):
            differ.append(name)
    return differ


def layer(stage: Path, dest: Path, epoch: int) -> None:
    """A deterministic tar of everything under stage: sorted, fixed owner and mtime."""
    tops = sorted(p.name for p in stage.iterdir())
    r = subprocess.run(
        [
            "tar",
            "-C",
            str(stage),
            "--sort=name",
            f"--mtime=@{epoch}",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--format=gnu",
            "-cf",
            str(dest),
            *tops,
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise ToolError(f"{dest}: cannot write tree layer: {r.stderr.strip()[:200]}")
