"""Hostile input in a real build: a reviewed-looking fix whose Makefile plants a symlink in the
host-side output dir (`.cmdline.o.cmd` -> a host-only file). Refused without --allow-build-files;
with it, the host never follows the symlink and the secret reaches no output."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from kgenv.build import report as build_report
from kgenv.cli import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "patches"
SECRET = "host-only secret, never to be read into an output\n"

pytestmark = pytest.mark.docker


def hostile_diff(tmp_path: Path, secret: Path) -> Path:
    # the container creates the same path for itself, so its own `cp` writes through the link and
    # the compile succeeds: only the host-side read is left to stop it
    plant = (
        f"$(shell mkdir -p /kgenv-out/fs/proc {secret.parent} && touch {secret} && "
        f"ln -sfn {secret} /kgenv-out/fs/proc/.cmdline.o.cmd)"
    )
    diff = tmp_path / "hostile.diff"
    diff.write_text(
        (FIXTURES / "cmdline.diff").read_text()
        + f"--- a/fs/proc/Makefile\n+++ b/fs/proc/Makefile\n@@ -0,0 +1 @@\n+{plant}\n"
    )
    return diff


def test_a_makefile_planting_a_symlink_cannot_make_the_host_read_it(env, docker_rt, tmp_path):
    secret = tmp_path / "host-only" / "secret"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    diff, out = hostile_diff(tmp_path, secret), tmp_path / "out"

    r = CliRunner().invoke(cli, ["build", str(diff), "--env", env.name, "-o", str(out)])
    assert r.exit_code == 1, (r.output, r.exception)
    # after the refusal class, where the reason names one
    assert f"{diff}: changes build file(s) fs/proc/Makefile" in build_report.load(out / "report.json").result.reason

    r = CliRunner().invoke(cli, ["build", str(diff), "--env", env.name, "-o", str(out), "--allow-build-files"])
    assert r.exit_code == 2, (r.output, r.exception)
    (line,) = [ln for ln in r.stderr.splitlines() if not ln.startswith("[")]
    assert line.startswith("kgenv: ") and line.endswith("/fs/proc/.cmdline.o.cmd: is a symlink; refusing to follow it")
    rep = build_report.load(out / "report.json")
    assert rep.result.outcome == "error" and rep.fix.notes
    assert secret.read_text() == SECRET
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert SECRET not in (out / "report.json").read_text()


def test_a_diff_through_the_objtrees_source_symlink_is_one_line(env, tmp_path):
    # the objtree's `source` is an absolute symlink to the source tree: the files read from the env's
    # tree carry it as such, and the path is refused as going through it (no tarfile traceback)
    link = f"{env.kernel.objtree}/source"
    diff = tmp_path / "through-source.diff"
    diff.write_text((FIXTURES / "cmdline.diff").read_text().replace("/fs/proc/cmdline.c", f"/{link}/fs/proc/cmdline.c"))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["build", str(diff), "--env", env.name, "-o", str(out)])
    assert r.exit_code == 2, (r.output, r.exception)
    (line,) = [ln for ln in r.stderr.splitlines() if not ln.startswith("[")]
    assert line == (
        f"kgenv: through-source.diff: path '{link}/fs/proc/cmdline.c' goes through a symlink in the kernel tree "
        f"('{link}')"
    )
    assert build_report.load(out / "report.json").result.outcome == "error"
