"""`kgenv snapshot`: a shipped kernel (Debian, or a vendor's build dir) into an env."""

from pathlib import Path

import click

from kgenv import manifest
from kgenv.cli.common import emit, progress_for
from kgenv.env import lifecycle
from kgenv.errors import UserError
from kgenv.runtime.docker import runtime


@click.command("snapshot")
@click.argument("build_dir", required=False, type=click.Path(path_type=Path))
@click.option(
    "--debian", "debian_spec", metavar="LINE|ABI", help="A Debian release line (bookworm) or ABI (6.1.0-57-amd64)."
)
@click.option("--name", help="Env name (default: debian-<abi>).")
@click.option("--force", is_flag=True, help="Replace an existing env of the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@click.option("-v", "--verbose", is_flag=True)
@click.option("--keep-tmp", is_flag=True, help="Keep the work directory (rootfs, layers, tree).")
@click.option(
    "--line", help="BUILD_DIR: the Debian release whose archive holds the compiler (default: from its version)."
)
@click.option(
    "--make", "make_vars", multiple=True, metavar="VAR=VALUE", help="BUILD_DIR: a make-line variable of the build."
)
def snapshot_command(
    build_dir: Path | None,
    debian_spec: str | None,
    name: str | None,
    force: bool,
    as_json: bool,
    verbose: bool,
    keep_tmp: bool,
    line: str | None,
    make_vars: tuple[str, ...],
) -> None:
    """Record a shipped kernel's toolchain into envs/<name>.toml and a reproducible env image."""
    if bool(build_dir) == bool(debian_spec):
        raise UserError("snapshot: give either --debian LINE|ABI or a BUILD_DIR")
    progress = progress_for(as_json, verbose)
    if build_dir:
        from kgenv.env.vendor import parse_make_vars, snapshot_build_dir

        m = snapshot_build_dir(build_dir, runtime, name, line, force, progress, keep_tmp, parse_make_vars(make_vars))
    else:
        from kgenv.env.debian import snapshot_debian

        assert debian_spec is not None
        m = snapshot_debian(debian_spec, runtime(), name, force, progress, keep_tmp)
    emit(
        lifecycle.show(m),
        as_json,
        f"{manifest.path_of(m.name)}: {m.kernel.release} in image {m.image.id[:19]} ({m.image.size / 1e9:.2f} GB)",
    )
