"""`kgenv boot-test`: boot the shipped kernel under QEMU with a livepatch module and prove it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kgenv.boot import DEFAULT_TIMEOUT, Boot, boot_test
from kgenv.boot.markers import Marker
from kgenv.errors import UserError
from kgenv.progress import Progress


def _kernel_of(kernel: Path | None, env: str | None, progress: Progress) -> Path:
    """--kernel as given, or the shipped vmlinuz recorded in env NAME's manifest."""
    if kernel and not env:
        return kernel
    if env and not kernel:
        return _env_vmlinuz(env, progress)
    raise UserError("give exactly one of --kernel VMLINUZ or --env NAME")


def _env_vmlinuz(name: str, progress: Progress) -> Path:
    """The env's vmlinuz from the cache, fetched again if the cache lost it, checked by sha256."""
    from kgenv import manifest  # only --env needs the manifest and archive code
    from kgenv.env.lifecycle import restore_files

    m = manifest.load(name)
    restore_files(m, None, progress, ["vmlinuz"])
    return m.file("vmlinuz")


def _on_marker(progress: Progress):
    def show(m: Marker, seconds: float) -> None:
        if m.kind == "phase":
            extra = f" (kernel up at {m.get('t')} s)" if m.get("name") == "init" else ""
            msg = f": {m.msg}" if m.msg else ""
            progress.step(f"{m.get('name')} {m.get('status')}{extra}{msg}")
        elif m.kind == "sympos":
            progress.step(f"sympos {m.get('obj')} {m.get('func')} {m.get('pos')}: {m.get('status')}")

    return show


def _seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def _report(boot: Boot, verbose: bool) -> None:
    t = boot.timings
    if boot.passed:
        click.echo(
            f"PASS {boot.module} on {boot.release or boot.kernel} in {_seconds(t['total'])} "
            f"(to /init {_seconds(t['to_init'])}, load {_seconds(t['load'])}, "
            f"enable {_seconds(t['enable'])}, disable {_seconds(t['disable'])})"
        )
    else:
        click.echo(f"FAIL {boot.module}: {boot.reason}")
    if boot.kernel_log and (verbose or not boot.passed):
        click.echo("kernel log:")
        for line in boot.kernel_log:
            click.echo(f"  {line}")
    if verbose:
        click.echo("timings: " + ", ".join(f"{k} {_seconds(v)}" for k, v in t.items()))
        click.echo("phases: " + ", ".join(f"{k} {v}" for k, v in boot.phases.items()))
    if verbose or not boot.passed:
        click.echo(f"serial log: {boot.serial_log}")


def _report_kept(boot: Boot) -> None:
    click.echo(f"kept: {Path(boot.serial_log).with_suffix('.d')} (initramfs.cpio, qemu-command)")


@click.command("boot-test")
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kernel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The shipped kernel image (vmlinuz) to boot.",
)
@click.option("--env", help="A recorded env (kgenv snapshot) whose shipped vmlinuz to boot.")
@click.option(
    "--check",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="sh script run in the guest: must fail before the patch, pass with it, fail after.",
)
@click.option(
    "--sympos",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='Expected old_sympos list, lines "objname funcname sympos [offset-from-_text]".',
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A shipped module the patch applies to, loaded first (repeatable, dependencies first).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=5),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds before QEMU is stopped.",
)
@click.option(
    "--log",
    "serial_log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to keep the serial log (default: the kgenv cache).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result record as JSON only.")
@click.option("-v", "--verbose", is_flag=True, help="Show timings, phases and the kernel log.")
@click.option("--keep-tmp", is_flag=True, help="Keep the initramfs and QEMU command line beside the serial log.")
def boot_test_command(module, kernel, env, check, sympos, targets, timeout, serial_log, as_json, verbose, keep_tmp):
    """Boot the shipped kernel under QEMU (TCG) with MODULE and prove the livepatch works.

    Exit 0: pass. Exit 1: the module did not load, a transition stuck, the check was wrong,
    or the kernel crashed. Exit 2: bad input or a missing tool.
    """
    progress = Progress(quiet=as_json)
    vmlinuz = _kernel_of(kernel, env, progress)
    progress.step(f"boot {vmlinuz.name} with {module.name} under QEMU (TCG)")
    boot = boot_test(
        module,
        vmlinuz,
        check=check,
        sympos=sympos,
        timeout=timeout,
        targets=targets,
        serial_log=serial_log,
        keep_tmp=keep_tmp,
        progress=_on_marker(progress),
    )
    if as_json:
        click.echo(json.dumps(boot.to_dict(), indent=2))
    else:
        _report(boot, verbose)
        if keep_tmp:
            _report_kept(boot)
    sys.exit(0 if boot.passed else 1)
