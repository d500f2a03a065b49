"""`kgenv build FIX.DIFF --env NAME -o OUTDIR`: a verified livepatch module, or a reasoned refusal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import cast

import click

from kgenv import manifest
from kgenv.build import pipeline
from kgenv.build.report import BuildReport
from kgenv.errors import KgenvError, UserError
from kgenv.manifest import Manifest
from kgenv.progress import Progress
from kgenv.runtime.base import Runtime


def _summary(report: BuildReport) -> str:
    res, env = report.result, report.env
    lines = [
        f"{res.outcome.upper()}: {report.fix.name} for {env.kernel_release} "
        f"(env {env.name}, image {env.image_id[7:19]})"
    ]
    if res.reason:
        lines.append(f"  reason: {res.reason}")
    for f in report.functions:
        where = f"{f.object}:{f.name}" + (f",{f.sympos}" if f.sympos else "")
        lines.append(f"  {f.verdict:<9} {where:<48} {f.note or f.trace}")
    if res.module:
        lines.append(f"  module: {res.module} sha256 {res.module_sha256[:16]}")
    if report.boot is not None:
        lines.append(f"  boot test: {report.boot.result} in {report.boot.seconds} s")
    total = sum(report.stages.values())
    lines.append("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.stages.items()) + f" (total {total:.1f}s)")
    return "\n".join(lines)


def make_runtime(name: str, m: Manifest) -> Runtime:
    """Docker, or this machine itself once its toolchain fingerprint equals the manifest's."""
    if name == "host":
        from kgenv.runtime.host import HostRuntime

        return HostRuntime(m)
    from kgenv.runtime.docker import runtime

    return runtime()


class Unavailable:
    """Stands in for a runtime that could not start, so that the build still writes its report:
    its first use (the check stage) raises the reason."""

    name = "unavailable"

    def __init__(self, error: KgenvError):
        self.error = error

    def __getattr__(self, attr: str):
        raise self.error


def same_image(given: str, image_id: str) -> bool:
    """--image as the full ID, or its hex at least as long as the 12 characters `envs list` prints."""
    hex_part = given.removeprefix("sha256:")
    return len(hex_part) >= 12 and all(c in "0123456789abcdef" for c in hex_part) and image_id[7:].startswith(hex_part)


@click.command("build")
@click.argument("diff", type=click.Path(path_type=Path))
@click.option("--env", "env_name", required=True, metavar="NAME", help="Recorded environment to build in.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(path_type=Path), metavar="OUTDIR")
@click.option("--name", help="Patch name (livepatch-<name>.ko); default from the diff's file name.")
@click.option("--image", metavar="ID", help="Require the env's image to be this ID (full, or 12+ hex digits).")
@click.option(
    "--tu",
    "tus",
    multiple=True,
    metavar="PATH.o",
    help="Rebuild and compare this TU too; with a header change, the units named here and in the diff are "
    "the ones patched (without --tu kgenv finds the header's users in the kernel's debug info).",
)
@click.option("--boot-test", is_flag=True, help="Boot the shipped kernel in QEMU and prove the module.")
@click.option(
    "--allow-build-files",
    is_flag=True,
    help="Accept a diff that changes Makefile/Kbuild/Kconfig*/*.mk/scripts/ (make runs them as root); "
    "only after reviewing them. The report notes it.",
)
@click.option(
    "--check",
    type=click.Path(path_type=Path),
    metavar="SCRIPT",
    help="Guest shell snippet: exit 0 when the fix is in effect (with --boot-test).",
)
@click.option(
    "--runtime",
    "runtime_name",
    type=click.Choice(["docker", "host"]),
    default="docker",
    show_default=True,
    help="host: this machine is the env's build root (fingerprint-checked).",
)
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=2, show_default=True, help="Parallel compiles.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the summary.")
@click.option("-v", "--verbose", is_flag=True)
@click.option("--keep-tmp", is_flag=True, help="Keep the work directory and print its path.")
def build_command(
    diff,
    env_name,
    outdir,
    name,
    image,
    tus,
    boot_test,
    allow_build_files,
    check,
    runtime_name,
    jobs,
    as_json,
    verbose,
    keep_tmp,
):
    """Build a livepatch module for FIX.DIFF in env NAME's image; verify it before hand-off."""
    pipeline.check_outdir(outdir, create=False)  # first: a file, /proc or a read-only dir is an error
    if not diff.is_file():
        raise UserError(f"{diff}: not a regular file" if diff.exists() else f"{diff}: no such diff file")
    if check is not None and not check.is_file():
        raise UserError(f"{check}: no such check script")
    if check is not None and not boot_test:
        raise UserError("--check only makes sense with --boot-test")
    m = manifest.load(env_name)
    if image and not same_image(image, m.image.id):
        raise UserError(f"env {env_name}: image is {m.image.id}, not {image}")
    req = pipeline.Request(
        diff=diff,
        env=m,
        outdir=outdir,
        name=pipeline.check_name(name or pipeline.default_name(diff)),
        extra_tus=tuple(tus),
        keep_tmp=keep_tmp,
        jobs=jobs,
        boot_test=boot_test,
        check=check,
        allow_build_files=allow_build_files,
    )
    try:
        rt = make_runtime(runtime_name, m)
    except KgenvError as e:  # engine down, host unlike the env: a result too, in report.json like any
        rt = cast(Runtime, Unavailable(e))
    b = pipeline.Build(req, rt, Progress(quiet=as_json and not verbose))
    if keep_tmp:
        click.echo(f"work directory: {b.tmp}", err=True)
    result = b.run()
    if as_json:
        click.echo(json.dumps(result.report.to_dict(), indent=1))
    elif result.report.result.outcome == "error":
        click.echo(f"kgenv: {result.report.result.reason}", err=True)
    else:
        click.echo(_summary(result.report))
    sys.exit(result.exit_code)
