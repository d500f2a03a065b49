"""The command line: options become records, each command calls one stage; errors become exit codes."""

import json
import sys
from pathlib import Path

import click

from . import __version__, envs, manifest
from .cli_audit import audit_command
from .cli_boot import boot_test_command
from .cli_build import build_command
from .cli_farm import farm_group
from .cli_verify import verify_command
from .errors import KgenvError, UserError
from .progress import Progress


def _progress(as_json: bool, verbose: bool = False) -> Progress:
    return Progress(quiet=as_json and not verbose)


def _runtime():
    from .runtime.docker import runtime

    return runtime()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kgenv")
def cli():
    """Build live kernel patches in the toolchain that built the running kernel, and prove it."""


@cli.command()
@click.argument("build_dir", required=False, type=click.Path(path_type=Path))
@click.option("--debian", "debian_spec", metavar="LINE|ABI", help="A Debian release line (bookworm) or ABI (6.1.0-57-amd64).")
@click.option("--name", help="Env name (default: debian-<abi>).")
@click.option("--force", is_flag=True, help="Replace an existing env of the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@click.option("-v", "--verbose", is_flag=True)
@click.option("--keep-tmp", is_flag=True, help="Keep the work directory (rootfs, layers, tree).")
@click.option("--line", help="BUILD_DIR: the Debian release whose archive holds the compiler (default: from its version).")
@click.option("--make", "make_vars", multiple=True, metavar="VAR=VALUE", help="BUILD_DIR: a make-line variable of the build.")
def snapshot(build_dir, debian_spec, name, force, as_json, verbose, keep_tmp, line, make_vars):
    """Record a shipped kernel's toolchain into envs/<name>.toml and a reproducible env image."""
    from .snapshot import snapshot_debian

    if bool(build_dir) == bool(debian_spec):
        raise UserError("snapshot: give either --debian LINE|ABI or a BUILD_DIR")
    if build_dir:
        from .snapshot_tree import snapshot_build_dir, parse_make_vars

        m = snapshot_build_dir(build_dir, _runtime, name, line, force, _progress(as_json, verbose), keep_tmp,
                               parse_make_vars(make_vars))
    else:
        m = snapshot_debian(debian_spec, _runtime(), name, force, _progress(as_json, verbose), keep_tmp)
    _emit(envs.show(m), as_json, f"{manifest.path_of(m.name)}: {m.kernel.release} in image {m.image.id[:19]} "
          f"({m.image.size / 1e9:.2f} GB)")


@cli.group("envs")
def envs_group():
    """Recorded environments: list, show, verify, restore, export, import."""


@envs_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def envs_list(as_json):
    rows = [manifest.load(n) for n in manifest.names()]
    if as_json:
        click.echo(json.dumps({"envs": {m.name: {"release": m.kernel.release, "image": m.image.id,
                                                 "compiler": m.fingerprint["cc_version_text"]} for m in rows}},
                              indent=2, sort_keys=True))
        return
    for m in rows:
        click.echo(f"{m.name:32} {m.kernel.release:24} {m.image.id[7:19]}  {m.fingerprint['cc_version_text']}")


@envs_group.command("show")
@click.argument("name")
def envs_show(name):
    click.echo(envs.as_json(envs.show(manifest.load(name))))


@envs_group.command("verify")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def envs_verify(name, as_json):
    """Self-check an env image: compiler string, probe .comment, binutils, pahole, config."""
    m = manifest.load(name)
    checks = envs.verify_image(_runtime(), m, _progress(as_json))
    if as_json:
        click.echo(json.dumps({"env": m.name, "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}},
                              indent=2, sort_keys=True))
    else:
        for c in checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name:10} {c.detail}")
    sys.exit(0 if all(c.ok for c in checks) else 1)


@envs_group.command("restore")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.option("--keep-tmp", is_flag=True)
def envs_restore(name, as_json, keep_tmp):
    """Re-create an env's image from its manifest; it must get the recorded image ID."""
    m = manifest.load(name)
    image_id = envs.restore(_runtime(), m, _progress(as_json), keep_tmp)
    _emit({"env": m.name, "image": image_id}, as_json, f"{m.name}: image {image_id[:19]} restored")


@envs_group.command("export")
@click.argument("name")
@click.option("-o", "output", required=True, type=click.Path(path_type=Path), help="Archive file to write.")
def envs_export(name, output):
    """Write the env (image + manifest) to one archive file."""
    envs.export(_runtime(), manifest.load(name), output)
    click.echo(f"{output}: {name}")


@envs_group.command("import")
@click.argument("archive", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--force", is_flag=True)
def envs_import(archive, force):
    """Load an exported env archive and save its manifest."""
    m = envs.import_(_runtime(), archive, force)
    click.echo(f"{m.name}: image {m.image.id[:19]} imported")


def _emit(data: dict, as_json: bool, line: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else line)


# Stages with larger option sets keep their commands in their own modules.
cli.add_command(verify_command)
cli.add_command(boot_test_command)
cli.add_command(build_command)
cli.add_command(farm_group)
cli.add_command(audit_command)


def main():
    try:
        cli.main(standalone_mode=False)
    except KgenvError as e:
        click.echo(f"kgenv: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("kgenv: interrupted", err=True)
        sys.exit(2)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("kgenv: interrupted", err=True)
        sys.exit(2)
