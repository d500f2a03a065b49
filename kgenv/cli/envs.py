"""`kgenv envs`: list, show, verify, restore, export and import recorded envs."""

import json
import sys
from pathlib import Path

import click

from kgenv import manifest
from kgenv.cli.common import emit, progress_for
from kgenv.env import lifecycle
from kgenv.runtime.docker import runtime


@click.group("envs")
def envs_group() -> None:
    """Recorded environments: list, show, verify, restore, export, import."""


@envs_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def envs_list(as_json: bool) -> None:
    rows = [manifest.load(n) for n in manifest.names()]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "envs": {
                        m.name: {
                            "release": m.kernel.release,
                            "image": m.image.id,
                            "compiler": m.fingerprint["cc_version_text"],
                        }
                        for m in rows
                    }
                },
                indent=2,
                sort_keys=True,
            )
        )
        return
    for m in rows:
        click.echo(f"{m.name:32} {m.kernel.release:24} {m.image.id[7:19]}  {m.fingerprint['cc_version_text']}")


@envs_group.command("show")
@click.argument("name")
def envs_show(name: str) -> None:
    click.echo(lifecycle.as_json(lifecycle.show(manifest.load(name))))


@envs_group.command("verify")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def envs_verify(name: str, as_json: bool) -> None:
    """Self-check an env image: compiler string, probe .comment, binutils, pahole, config."""
    m = manifest.load(name)
    checks = lifecycle.verify_image(runtime(), m, progress_for(as_json))
    if as_json:
        click.echo(
            json.dumps(
                {"env": m.name, "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}},
                indent=2,
                sort_keys=True,
            )
        )
    else:
        for c in checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name:10} {c.detail}")
    sys.exit(0 if all(c.ok for c in checks) else 1)


@envs_group.command("restore")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.option("--keep-tmp", is_flag=True)
def envs_restore(name: str, as_json: bool, keep_tmp: bool) -> None:
    """Re-create an env's image from its manifest; it must get the recorded ID."""
    m = manifest.load(name)
    image_id = lifecycle.restore(runtime(), m, progress_for(as_json), keep_tmp)
    emit({"env": m.name, "image": image_id}, as_json, f"{m.name}: image {image_id[:19]} restored")


@envs_group.command("export")
@click.argument("name")
@click.option("-o", "output", required=True, type=click.Path(path_type=Path), help="Archive file to write.")
def envs_export(name: str, output: Path) -> None:
    """Write the env (image + manifest) to one archive file."""
    lifecycle.check_export_dest(output)  # first: a bad -o is an error before the engine is reached
    m = manifest.load(name)
    lifecycle.export(runtime(), m, output)
    click.echo(f"{output}: {name}")


@envs_group.command("import")
@click.argument("archive", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--force", is_flag=True)
def envs_import(archive: Path, force: bool) -> None:
    """Load an exported env archive and save its manifest."""
    m = lifecycle.read_export(archive)  # first: a file that is no env export needs no engine to say so
    m = lifecycle.import_(runtime(), archive, force, m)
    click.echo(f"{m.name}: image {m.image.id[:19]} imported")
