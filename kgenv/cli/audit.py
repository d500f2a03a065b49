"""`kgenv audit`: does a candidate toolchain reproduce a shipped kernel? Evidence for people and build farms."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kgenv import manifest
from kgenv.audit import DEFAULT_SAMPLE, OBJECTS, audit
from kgenv.audit.present import FORMATS, FleetRow, fleet_exit, load, render, render_fleet
from kgenv.audit.records import Candidate
from kgenv.errors import KgenvError, UserError
from kgenv.fsutil import write_atomic
from kgenv.progress import Progress
from kgenv.runtime.base import Runtime


def _emit(data: str, output: Path | None) -> None:
    if output:
        write_atomic(output, data)
    else:
        click.echo(data, nl=False)


def _fleet(
    rt: Runtime, toolchain, cc, tus, sample_n, seed, jobs, progress, keep_tmp, objects
) -> tuple[Candidate | dict, list]:
    if toolchain and toolchain.startswith("image:"):
        raise UserError("--all: an image holds one kernel's tree; use --cc, --toolchain debian:SUITE/CC or host")
    rows, cand = [], None
    names = manifest.names()
    if not names:
        raise UserError(f"{manifest.envs_dir()}: no env manifests to audit")
    for name in names:
        m = manifest.load(name)
        progress.step(f"== {name}")
        try:
            r = audit(rt, m, toolchain, cc, tus, sample_n, seed, jobs, progress, keep_tmp, objects)
            cand = cand or r.candidate
            rows.append(FleetRow(name, m.kernel.release, r))
        except KgenvError as e:
            rows.append(FleetRow(name, m.kernel.release, error=str(e).splitlines()[0][:300]))
    label = toolchain or (f"--cc {cc}" if cc else "each env's own image")
    return cand.to_dict() | {"label": label} if cand else {"kind": "", "label": label}, rows


@click.command("audit")
@click.option("--env", "env", metavar="NAME", help="The env (shipped kernel) to audit against.")
@click.option("--all", "all_envs", is_flag=True, help="Every env in envs/, one row per kernel.")
@click.option(
    "--toolchain",
    metavar="SPEC",
    help="env (default), host, image:ID, or debian:SUITE/COMPILER (e.g. debian:trixie/gcc-14).",
)
@click.option(
    "--cc", metavar="PKG", help="A Debian compiler package (gcc-11) installed into a derivative of the env image."
)
@click.option("--tu", "tus", multiple=True, metavar="PATH", help="A TU to rebuild (fs/namei.o); repeatable.")
@click.option(
    "--sample",
    "sample_n",
    type=int,
    default=DEFAULT_SAMPLE,
    show_default=True,
    help="Without --tu: how many TUs to sample from the shipped kernel's C units (vmlinux and modules).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sample seed: same seed, same TUs.")
@click.option(
    "--objects",
    type=click.Choice(OBJECTS),
    default="all",
    show_default=True,
    help="Sample from vmlinux and modules (stratified by their numbers of units), or one of them.",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("-o", "output", type=click.Path(path_type=Path), help="Write the report to FILE (atomically).")
@click.option(
    "--from-json",
    "from_json",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Re-render a saved JSON report in --format instead of auditing.",
)
@click.option("-j", "jobs", type=click.IntRange(1, 64), help="Parallel compile jobs (default: all cores).")
@click.option("-v", "--verbose", is_flag=True, help="Progress even when the report goes to stdout as data.")
@click.option("--keep-tmp", is_flag=True, help="Keep the rebuilt objects (and a host tree).")
def audit_command(
    env, all_envs, toolchain, cc, tus, sample_n, seed, objects, fmt, as_json, output, from_json, jobs, verbose, keep_tmp
):
    """Rebuild TUs of a shipped kernel with a candidate toolchain and compare every function.

    Exit 0: the candidate reproduces the kernel; 1: mismatch; 2: error.
    """
    fmt = "json" if as_json else fmt
    if from_json:
        report = load(from_json)
        _emit(render(report, fmt), output)
        sys.exit(report.exit_code)
    if bool(env) == bool(all_envs):
        raise UserError("audit: give either --env NAME or --all")
    progress = Progress(quiet=fmt != "text" and not output and not verbose)
    from kgenv.runtime.docker import runtime

    rt = runtime()
    if all_envs:
        cand, rows = _fleet(rt, toolchain, cc, list(tus), sample_n, seed, jobs, progress, keep_tmp, objects)
        _emit(render_fleet(cand, rows, fmt), output)
        sys.exit(fleet_exit(rows))
    report = audit(rt, manifest.load(env), toolchain, cc, list(tus), sample_n, seed, jobs, progress, keep_tmp, objects)
    _emit(render(report, fmt), output)
    if output:
        s = report.summary
        click.echo(f"{output}: {report.verdict}, {s['identical']}/{s['functions']} functions identical", err=True)
    sys.exit(report.exit_code)
