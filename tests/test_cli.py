"""The CLI's one error boundary: every failure is one `kgenv: ` line and an exit code."""

import click
import pytest
from click.testing import CliRunner

from kgenv.cli import cli
from kgenv.errors import RefusedError, UserError


@pytest.fixture
def failing(monkeypatch):
    """Make `kgenv envs list` raise the given exception."""

    def arm(exc: BaseException) -> None:
        def boom(*_a, **_k):
            raise exc

        monkeypatch.setattr("kgenv.manifest.names", boom)

    return arm


@pytest.mark.parametrize(
    "exc, code, line",
    [
        (UserError("envs/x.toml: not valid TOML"), 2, "kgenv: envs/x.toml: not valid TOML"),
        (RefusedError("the fix changes data"), 1, "kgenv: the fix changes data"),
        (RuntimeError("boom"), 2, "kgenv: internal error: RuntimeError: boom (KGENV_DEBUG=1 shows where)"),
        (
            PermissionError(13, "Permission denied", "out/report.json"),
            2,
            "kgenv: PermissionError: [Errno 13] Permission denied: 'out/report.json' (KGENV_DEBUG=1 shows where)",
        ),
        (KeyboardInterrupt(), 2, "kgenv: interrupted"),
    ],
)
def test_errors_are_one_line_with_their_exit_code(failing, monkeypatch, exc, code, line):
    monkeypatch.delenv("KGENV_DEBUG", raising=False)
    failing(exc)
    r = CliRunner().invoke(cli, ["envs", "list"])
    assert r.exit_code == code
    assert [s for s in r.stderr.splitlines() if s] == [line]  # click ends a ^C line first
    assert "Traceback" not in r.output


def test_debug_shows_the_traceback(failing, monkeypatch):
    monkeypatch.setenv("KGENV_DEBUG", "1")
    failing(RuntimeError("boom"))
    r = CliRunner().invoke(cli, ["envs", "list"])
    assert isinstance(r.exception, RuntimeError)


def test_usage_errors_exit_2_and_help_exits_0():
    assert CliRunner().invoke(cli, ["build"]).exit_code == 2
    assert CliRunner().invoke(cli, ["no-such-command"]).exit_code == 2
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0 and "snapshot" in r.stdout
    assert CliRunner().invoke(cli, ["--version"]).stdout.startswith("kgenv, version ")


def test_every_command_is_registered():
    assert isinstance(cli, click.Group)
    assert set(cli.commands) == {"snapshot", "envs", "verify", "boot-test", "build", "farm", "audit"}
