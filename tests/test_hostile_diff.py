"""Hostile input: a diff whose old and new names differ (a rename, or `--- a/x.c` over `+++ b/y.c`)
would patch one file and build another; it is refused up front, naming the diff and both names."""

import json
import os

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


# -- rename headers, file modes, quoting, encodings: refused up front, one line naming the diff ------

GIT = "diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c\n"
HUNK = "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "diff --git a/fs/x.c b/fs/y.c\nsimilarity index 100%\nrename from fs/x.c\n",
            "'rename from fs/x.c' without 'rename to' ('diff --git a/fs/x.c b/fs/y.c')",
        ),
        (
            "diff --git a/fs/x.c b/fs/y.c\nrename to fs/y.c\n" + HUNK,
            "'rename to fs/y.c' without 'rename from' ('diff --git a/fs/x.c b/fs/y.c')",
        ),
        (GIT + "similarity index 90%\n" + HUNK, "'similarity index' without a rename or copy"),
        # git would patch cmdline.c, kgenv version.c
        (
            GIT + HUNK.replace("cmdline.c", "version.c"),
            "'diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c' names another file than its ---/+++ lines",
        ),
        (GIT + "old mode 100644\nnew mode 100999\n", "line 3: invalid file mode in 'new mode 100999'"),
        (GIT + "old mode 12x\nnew mode 100755\n" + HUNK, "line 2: invalid file mode in 'old mode 12x'"),
        (GIT + "new file mode 644\n" + HUNK, "line 2: invalid file mode in 'new file mode 644'"),
        (
            HUNK.replace("a/fs/proc/cmdline.c", '"a/fs/proc/cmd\\999.c"'),
            'bad escape in quoted path "a/fs/proc/cmd\\999.c"',
        ),
        (
            HUNK.replace("a/fs/proc/cmdline.c", '"a/fs/proc/cmd\\777.c"'),
            'bad escape in quoted path "a/fs/proc/cmd\\777.c"',
        ),
        (HUNK.replace("+b\n", "+/* caf\udce9 */\n"), "line 5: added text is not UTF-8 (byte 0xe9)"),
        (HUNK.replace("cmdline.c", "caf\udce9.c"), "path 'a/fs/proc/caf\\xe9.c' is not UTF-8"),
        (HUNK.replace("a/fs/proc/cmdline.c", '"a/fs/proc/caf\\351.c"'), "path 'a/fs/proc/caf\\xe9.c' is not UTF-8"),
    ],
)
def test_malformed_headers_are_one_line_naming_the_diff(tmp_path, text, message):
    diff = tmp_path / "fix.diff"
    diff.write_bytes(text.encode(errors="surrogateescape"))
    with pytest.raises(UserError) as e:
        diffapply.load(diff)
    assert str(e.value).startswith(f"fix.diff: {message}") and "\n" not in str(e.value)


def test_a_rename_whose_hunks_name_one_file_is_still_a_rename(tmp_path):
    diff = tmp_path / "fix.diff"
    diff.write_text(
        "diff --git a/fs/proc/cmdline.c b/fs/proc/version.c\nsimilarity index 90%\n"
        "rename from fs/proc/cmdline.c\nrename to fs/proc/version.c\n" + HUNK
    )
    with pytest.raises(UserError) as e:
        diffapply.load(diff)
    assert str(e.value) == f"{diff}: {MESSAGE}"


def test_git_mode_changes_and_quoted_names_that_are_fine_still_load(tmp_path):
    diff = tmp_path / "ok.diff"
    diff.write_text(
        GIT + "old mode 100644\nnew mode 100755\n" + HUNK + '--- "a/fs/t\\303\\251st.c"\n+++ "b/fs/t\\303\\251st.c"\n'
        "@@ -1 +1 @@\n-a\n+/* caf\u00e9 in UTF-8 */\n"
    )
    assert diffapply.load(diff).paths == ("fs/proc/cmdline.c", "fs/t\u00e9st.c")


def test_latin1_in_the_tree_is_written_back_as_it_was(tmp_path):
    # context the tree has in Latin-1 (old drivers' comments) is kept byte for byte; only added text must be UTF-8
    (tmp_path / "tree" / "fs").mkdir(parents=True)
    (tmp_path / "tree" / "fs" / "x.c").write_bytes(b"/* Jos\xe9 */\nint a;\n")
    d = diffapply.parse(b"--- a/fs/x.c\n+++ b/fs/x.c\n@@ -1,2 +1,2 @@\n /* Jos\xe9 */\n-int a;\n+int b;\n")
    out = diffapply.apply(d, tmp_path / "tree", tmp_path / "out")
    assert out["fs/x.c"].read_bytes() == b"/* Jos\xe9 */\nint b;\n"


def test_the_cli_reports_a_half_rename_in_one_line_and_report_json(tmp_path, monkeypatch):
    m = saved_env(tmp_path, monkeypatch, "diff-env", {"symvers": ""})
    monkeypatch.setattr(cli_build, "make_runtime", lambda name, env: NoEngine("a container ran for a broken diff"))
    diff = tmp_path / "half.diff"
    diff.write_text("diff --git a/fs/x.c b/fs/y.c\nrename from fs/x.c\n")
    r = CliRunner().invoke(cli, ["build", str(diff), "--env", m.name, "-o", str(tmp_path / "out")])
    assert r.exit_code == 2, (r.output, r.exception)
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("[")]
    assert errors == ["kgenv: half.diff: 'rename from fs/x.c' without 'rename to' ('diff --git a/fs/x.c b/fs/y.c')"]
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["result"]["outcome"] == "error" and doc["result"]["reason"] == errors[0].removeprefix("kgenv: ")


def test_a_crlf_diff_parses_and_says_why_it_does_not_apply(tmp_path):
    (tmp_path / "tree" / "fs" / "proc").mkdir(parents=True)
    (tmp_path / "tree" / "fs" / "proc" / "cmdline.c").write_text("a\n")
    d = diffapply.parse((GIT + HUNK).replace("\n", "\r\n"), "crlf.diff")
    assert d.paths == ("fs/proc/cmdline.c",)
    with pytest.raises(UserError) as e:
        diffapply.apply(d, tmp_path / "tree", tmp_path / "out")
    assert str(e.value) == (
        "crlf.diff: hunk 1 of fs/proc/cmdline.c (@@ -1 +1 @@) does not apply "
        "(the diff has CRLF line endings, the file LF: convert the diff)"
    )


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_a_diff_that_is_not_a_file_is_one_line(tmp_path, kind):
    diff = tmp_path / "fix.diff"
    diff.mkdir() if kind == "dir" else os.mkfifo(diff)
    r = CliRunner().invoke(cli, ["build", str(diff), "--env", "x", "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [f"kgenv: {diff}: not a regular file"]
