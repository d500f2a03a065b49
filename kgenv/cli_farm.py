"""`kgenv farm`: run a plan of kernels × fixes (locally or on Buildbot), write Buildbot's master config."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from kgenv.errors import KgenvError, UserError
from kgenv.progress import Progress

GLYPH = {"built": "built", "refused": "refused", "boot-failed": "BOOT-FAIL", "error": "ERROR", "not-run": "-"}


@click.group("farm")
def farm_group():
    """Farms of kernels × fixes: cached, resumable, local or on Buildbot."""


@farm_group.command("run")
@click.argument("plan_file", metavar="PLAN.toml", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), metavar="OUTDIR",
              help="Matrix and per-job outputs (default: farm-<plan name>).")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), help="Jobs at once (default: the plan's options.jobs).")
@click.option("--engine", type=click.Choice(["local", "buildbot"]), default="local", show_default=True)
@click.option("--master", metavar="URL", help="Buildbot master's web URL (with --engine buildbot).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Result cache (default: <kgenv cache>/farm).")
@click.option("--no-cache", is_flag=True, help="Run every job again (results are still stored).")
@click.option("--sign-key", type=click.Path(path_type=Path), help="PEM private key: also write signed modules.")
@click.option("--sign-cert", type=click.Path(path_type=Path), help="X.509 certificate of --sign-key.")
@click.option("--json", "as_json", is_flag=True, help="Print matrix.json instead of the table.")
@click.option("-v", "--verbose", is_flag=True)
def farm_run(plan_file, outdir, jobs, engine, master, cache_dir, no_cache, sign_key, sign_cert, as_json, verbose):
    """Every (kernel, fix) of PLAN.toml as a job: snapshot if missing, build, verify, boot proof."""
    from kgenv.farm import plan as plans
    from kgenv.farm.run import Farm
    from kgenv.farm.sign import SigningKey
    from kgenv.farm.store import Store
    from kgenv.runtime.docker import runtime

    try:
        p = plans.load(plan_file)
        if bool(sign_key) != bool(sign_cert):
            raise UserError("--sign-key and --sign-cert go together")
        signing = SigningKey(sign_key, sign_cert) if sign_key else None
        eng = _engine(engine, master, jobs or p.options.jobs)
        outdir = outdir or Path(f"farm-{p.path.stem}")
        # A service manager's SIGTERM stops the farm the same clean way as Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
        farm = Farm(p, outdir, eng, Store(cache_dir), runtime(), Progress(quiet=as_json and not verbose),
                    signing, not no_cache)
        m = farm.run()
    except KgenvError as exc:
        click.echo(f"kgenv farm: {exc}", err=True)
        sys.exit(exc.exit_code)
    click.echo(json.dumps(m.to_dict(), indent=1, sort_keys=True) if as_json else _table(m, outdir))
    sys.exit(m.exit_code)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _engine(name: str, master: str | None, jobs: int):
    from kgenv.farm.engine import LocalEngine

    if name == "local":
        if master:
            raise UserError("--master goes with --engine buildbot")
        return LocalEngine(jobs)
    if not master:
        raise UserError("--engine buildbot needs --master URL")
    from kgenv.farm.buildbot.client import BuildbotEngine

    return BuildbotEngine(master)


def _table(m, outdir: Path) -> str:
    fixes = [f.name for f in m.fixes]
    width = max(10, *(len(f) for f in fixes))
    rows = [f"{'kernel':<28}" + "".join(f" {f[:width]:<{width}}" for f in fixes)]
    for k in m.kernels:
        cells = [m.cell(k.env, f) for f in fixes]
        rows.append(f"{k.env[:28]:<28}" + "".join(
            f" {(GLYPH.get(c.outcome, c.outcome) + ('' if c.as_expected else '!')):<{width}}" for c in cells))
    n = m.counts()
    rows.append(f"{n['jobs']} jobs, {n['as_expected']} as expected, {n['cached']} cached "
                f"('!' = not the expected outcome); matrix: {outdir / 'matrix.json'}")
    return "\n".join(rows)
