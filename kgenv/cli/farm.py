"""`kgenv farm`: run a plan of kernels × fixes (locally or on Buildbot), write Buildbot's master config."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from kgenv.errors import UserError
from kgenv.progress import Progress

GLYPH = {"built": "built", "refused": "refused", "boot-failed": "BOOT-FAIL", "error": "ERROR", "not-run": "-"}


@click.group("farm")
def farm_group():
    """Farms of kernels × fixes: cached, resumable, local or on Buildbot."""


@farm_group.command("run")
@click.argument("plan_file", metavar="PLAN.toml", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "outdir",
    type=click.Path(path_type=Path),
    metavar="OUTDIR",
    help="Matrix and per-job outputs (default: farm-<plan name>).",
)
@click.option("-j", "--jobs", type=click.IntRange(1, 64), help="Jobs at once (default: the plan's options.jobs).")
@click.option("--engine", type=click.Choice(["local", "buildbot"]), default="local", show_default=True)
@click.option("--master", metavar="URL", help="Buildbot master's web URL (with --engine buildbot).")
@click.option(
    "--master-envs",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Export missing env images here (the master's kgenv-store/envs).",
)
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Result cache (default: <kgenv cache>/farm).")
@click.option("--no-cache", is_flag=True, help="Run every job again (results are still stored).")
@click.option("--sign-key", type=click.Path(path_type=Path), help="PEM private key: also write signed modules.")
@click.option("--sign-cert", type=click.Path(path_type=Path), help="X.509 certificate of --sign-key.")
@click.option("--json", "as_json", is_flag=True, help="Print matrix.json instead of the table.")
@click.option("-v", "--verbose", is_flag=True)
def farm_run(
    plan_file, outdir, jobs, engine, master, master_envs, cache_dir, no_cache, sign_key, sign_cert, as_json, verbose
):
    """Every (kernel, fix) of PLAN.toml as a job: snapshot if missing, build, verify, boot proof."""
    from kgenv.farm import plan as plans
    from kgenv.farm.run import Farm
    from kgenv.farm.sign import SigningKey
    from kgenv.farm.store import Store
    from kgenv.runtime.docker import runtime

    p = plans.load(plan_file)
    if bool(sign_key) != bool(sign_cert):
        raise UserError("--sign-key and --sign-cert go together")
    signing = SigningKey(sign_key, sign_cert) if sign_key else None
    eng = _engine(engine, master, master_envs, jobs or p.options.jobs)
    outdir = outdir or Path(f"farm-{p.path.stem}")
    # A service manager's SIGTERM stops the farm the same clean way as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    farm = Farm(
        p, outdir, eng, Store(cache_dir), runtime(), Progress(quiet=as_json and not verbose), signing, not no_cache
    )
    m = farm.run()
    click.echo(json.dumps(m.to_dict(), indent=1, sort_keys=True) if as_json else _table(m, outdir))
    sys.exit(m.exit_code)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _engine(name: str, master: str | None, master_envs: Path | None, jobs: int):
    from kgenv.farm.engine import LocalEngine

    if name == "local":
        if master or master_envs:
            raise UserError("--master and --master-envs go with --engine buildbot")
        return LocalEngine(jobs)
    if not master:
        raise UserError("--engine buildbot needs --master URL")
    from kgenv.farm.buildbot.client import BuildbotEngine

    return BuildbotEngine(master, master_envs)


def _table(m, outdir: Path) -> str:
    fixes = [f.name for f in m.fixes]
    width = max(10, *(len(f) for f in fixes))
    rows = [f"{'kernel':<28}" + "".join(f" {f[:width]:<{width}}" for f in fixes)]
    for k in m.kernels:
        cells = [m.cell(k.env, f) for f in fixes]
        rows.append(
            f"{k.env[:28]:<28}"
            + "".join(f" {(GLYPH.get(c.outcome, c.outcome) + ('' if c.as_expected else '!')):<{width}}" for c in cells)
        )
    n = m.counts()
    rows.append(
        f"{n['jobs']} jobs, {n['as_expected']} as expected, {n['cached']} cached "
        f"('!' = not the expected outcome); matrix: {outdir / 'matrix.json'}"
    )
    return "\n".join(rows)


@farm_group.command("buildbot-config")
@click.option("-o", "--output", "masterdir", required=True, type=click.Path(path_type=Path), metavar="MASTERDIR")
@click.option(
    "--worker", "workers", multiple=True, metavar="NAME", help="A worker name (repeat; default worker1, worker2)."
)
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address the master listens on.")
@click.option("--www-port", default=8010, show_default=True)
@click.option("--pb-port", default=9989, show_default=True, help="Worker protocol port.")
@click.option("--artifacts-port", default=8011, show_default=True, help="Read-only artefact store port.")
@click.option("--kgenv-command", default="kgenv", show_default=True, help="How workers run kgenv (shell words).")
@click.option("--build-command", help="How workers run kgenv build (default: --kgenv-command).")
@click.option("--cores", default=2, show_default=True, help="kgenv build -j on a worker.")
@click.option("--force", is_flag=True, help="Replace an existing master.cfg.")
def farm_buildbot_config(
    masterdir, workers, bind, www_port, pb_port, artifacts_port, kgenv_command, build_command, cores, force
):
    """Write a Buildbot master configuration that runs kgenv farm jobs (one builder, no request collapsing)."""
    import shlex

    from kgenv.farm.buildbot.config import MasterSettings, next_steps, write

    s = MasterSettings(
        tuple(workers) or MasterSettings.workers,
        bind,
        www_port,
        pb_port,
        artifacts_port,
        tuple(shlex.split(kgenv_command)),
        tuple(shlex.split(build_command or "")),
        cores,
    )
    data = write(masterdir, s, force)
    click.echo(f"{masterdir}/master.cfg written; next:")
    click.echo(next_steps(masterdir, data))


@farm_group.command("worker-env")
@click.argument("name")
@click.option("--image", "image_id", required=True, metavar="ID")
@click.option(
    "--archive",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A kgenv envs export archive to import first.",
)
def farm_worker_env(name, image_id, archive):
    """(Worker step) Print 'present' if env NAME with image ID is usable here, else 'missing'."""
    from kgenv.farm.worker import worker_env
    from kgenv.runtime.docker import runtime

    state = worker_env(name, image_id, runtime(), archive, Progress())
    click.echo(state)
    sys.exit(0 if state == "present" or not archive else 2)
