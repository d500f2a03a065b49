"""Hostile input: a diff whose old and new names differ (a rename, or `--- a/x.c` over `+++ b/y.c`)
would patch one file and build another; it is refused up front, naming the diff and both names."""

import pytest
from click.testing import CliRunner
from sample_manifest import NoEngine, saved_env

from kgenv.build import diffapply
from kgenv.cli import build as cli_build
from kgenv.cli import cli
from kgenv.errors import UserError

MISMATCH = "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/version.c\n@@ -1 +1 @@\n-a\n+b\n"
GIT_RENAME = (
    "diff --git a/fs/proc/cmdline.c b/fs/proc/version.c\nsimilarity index 90%\n"
    "rename from fs/proc/cmdline.c\nrename to fs/proc/version.c\n"
    "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/version.c\n@@ -1 +1 @@\n-a\n+b\n"
)
PURE_RENAME = (
    "diff --git a/fs/proc/cmdline.c b/fs/proc/version.c\nsimilarity index 100%\n"
    "rename from fs/proc/cmdline.c\nrename to fs/proc/version.c\n"
)
MESSAGE = (
    "old name fs/proc/cmdline.c and new name fs/proc/version.c differ; renames and mismatched names "
    "are refused (a fix patches the file it names)"
)


@pytest.mark.parametrize("text", [MISMATCH, GIT_RENAME, PURE_RENAME])
def test_mismatched_names_are_refused_when_loaded(tmp_path, text):
    diff = tmp_path / "fix.diff"
    diff.write_text(text)
    with pytest.raises(UserError) as e:
        diffapply.load(diff)
    assert str(e.value) == f"{diff}: {MESSAGE}"


def test_a_mismatch_in_a_later_file_section_is_refused(tmp_path):
    same = "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n"
    diff = tmp_path / "two.diff"
    diff.write_text(same + MISMATCH.replace("cmdline.c", "array.c"))
    with pytest.raises(UserError, match="old name fs/proc/array.c and new name fs/proc/version.c differ"):
        diffapply.load(diff)


def test_same_names_and_new_or_deleted_files_still_load(tmp_path):
    diff = tmp_path / "ok.diff"
    diff.write_text(
        "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n"
        "--- /dev/null\n+++ b/include/linux/kg.h\n@@ -0,0 +1 @@\n+#define KG 1\n"
    )
    assert diffapply.load(diff).paths == ("fs/proc/cmdline.c", "include/linux/kg.h")


def test_the_cli_refuses_it_before_any_container_runs(tmp_path, monkeypatch):
    m = saved_env(tmp_path, monkeypatch, "diff-env", {"symvers": ""})
    rt = NoEngine("a container ran for a diff with mismatched names")
    monkeypatch.setattr(cli_build, "make_runtime", lambda name, env: rt)
    diff = tmp_path / "fix.diff"
    diff.write_text(MISMATCH)
    r = CliRunner().invoke(cli, ["build", str(diff), "--env", m.name, "-o", str(tmp_path / "out")])
    assert r.exit_code == 2, (r.output, r.exception)
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("[")]
    assert errors == [f"kgenv: {diff}: {MESSAGE}"]
    assert not list((tmp_path / "out").glob("*.ko")) and not list((tmp_path / "out").glob("*.c"))
