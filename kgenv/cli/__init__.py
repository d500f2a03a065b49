"""The command line: options become records, each command calls one stage; the one error boundary."""

import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from kgenv import __version__
from kgenv.cli.audit import audit_command
from kgenv.cli.boot import boot_test_command
from kgenv.cli.build import build_command
from kgenv.cli.envs import envs_group
from kgenv.cli.farm import farm_group
from kgenv.cli.snapshot import snapshot_command
from kgenv.cli.verify import verify_command
from kgenv.errors import KgenvError, describe


class Kgenv(click.Group):
    """The group whose main() is the one error boundary, for the console script and CliRunner alike."""

    # like click.main in standalone mode, it never returns: every outcome is an exit code
    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> NoReturn:
        """Exit codes come from here, never from click's own handling (standalone_mode is ignored)."""
        handlers = on_interrupt()
        try:
            rc = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except KgenvError as e:
            fail(str(e), e.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt) as e:  # click turns KeyboardInterrupt into Abort
            fail("terminated (SIGTERM)" if Terminated in (type(e), type(e.__cause__)) else "interrupted")
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except Exception as e:  # a bug still ends in one line; KGENV_DEBUG=1 shows the traceback
            if os.environ.get("KGENV_DEBUG"):
                raise
            fail(f"{describe(e)} (KGENV_DEBUG=1 shows where)")
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        sys.exit(rc if isinstance(rc, int) else 0)  # ctx.exit(n) comes back as a return value


class Terminated(KeyboardInterrupt):
    """SIGTERM: a KeyboardInterrupt, so every cleanup that Ctrl-C runs runs for it too."""


def on_interrupt() -> dict[int, Any]:
    """SIGINT and SIGTERM (farms, CI, service managers) stop kgenv the same way: the build
    containers this process started are killed (their runs remove them) and the signal becomes an
    exception in the main thread, so work dirs are removed as for Ctrl-C; exit 2, one line.
    The previous handlers, to put back (tests call main in-process; other threads cannot set any)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {
        signal.SIGINT: signal.signal(signal.SIGINT, _interrupted),
        signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupted),
    }


def _interrupted(signum: int, frame: Any) -> None:
    # once: a second signal must not cut the cleanup short (SIGKILL still ends kgenv at once)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # containers run in the engine, outside kgenv's process group: stop them from a thread (never
    # from inside the handler, which may have interrupted the docker client holding a lock)
    docker = sys.modules.get("kgenv.runtime.docker")
    if docker is not None:
        threading.Thread(target=docker.stop_all, daemon=True).start()
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


@click.group(cls=Kgenv, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kgenv")
def cli() -> None:
    """Build live kernel patches in the toolchain that built the running kernel, and prove it."""


for command in (
    snapshot_command,
    envs_group,
    verify_command,
    boot_test_command,
    build_command,
    farm_group,
    audit_command,
):
    cli.add_command(command)


def fail(message: str, code: int = 2) -> NoReturn:
    """Every error leaves kgenv the same way: one line on stderr, one exit code."""
    click.echo(f"kgenv: {message}", err=True)
    sys.exit(code)


def main() -> None:
    cli.main(prog_name="kgenv")
