"""diffapply: parsing unified diffs and format-patch mails, path safety, exact hunk application."""

import os

import pytest

from kgenv.build import diffapply
from kgenv.errors import UserError

CMDLINE = "".join(f"line {i}\n" for i in range(1, 11))

GOOD = """\
--- a/fs/proc/cmdline.c\t2024-01-01 00:00:00
+++ b/fs/proc/cmdline.c\t2024-01-02 00:00:00
@@ -3,5 +3,5 @@
 line 3
 line 4
-line 5
+line five
 line 6
 line 7
"""

MAIL = """\
From 1234567890abcdef Mon Sep 17 00:00:00 2001
From: A Developer <dev@example.invalid>
Subject: [PATCH] proc: fix cmdline

Some explanation.
---
 fs/proc/cmdline.c | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c
index 1111111..2222222 100644
--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -8,3 +8,3 @@
 line 8
-line 9
+line nine
 line 10
-- 
2.39.2
"""

NEW_FILE = """\
diff --git a/include/linux/kg.h b/include/linux/kg.h
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/include/linux/kg.h
@@ -0,0 +1,2 @@
+#define KG 1
+#define KG2 2
"""

TWO_FILES = (
    GOOD
    + """\
--- a/arch/x86/kernel/entry.S
+++ b/arch/x86/kernel/entry.S
@@ -1,2 +1,3 @@
 line 1
+inserted
 line 2
"""
)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    (root / "fs/proc").mkdir(parents=True)
    (root / "fs/proc/cmdline.c").write_text(CMDLINE)
    (root / "arch/x86/kernel").mkdir(parents=True)
    (root / "arch/x86/kernel/entry.S").write_text("line 1\nline 2\n")
    (root / "include/linux").mkdir(parents=True)
    return root


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_good_unified_diff_applies_to_a_copy(tree, tmp_path):
    before = snapshot(tree)
    d = diffapply.parse(GOOD, "fix.diff")
    assert [(f.old_path, f.new_path) for f in d.files] == [("fs/proc/cmdline.c",) * 2]
    assert d.translation_units == ("fs/proc/cmdline.o",)
    assert d.headers == () and d.assembly == ()
    out = diffapply.apply(d, tree, tmp_path / "dest")
    assert out == {"fs/proc/cmdline.c": tmp_path / "dest/fs/proc/cmdline.c"}
    assert out["fs/proc/cmdline.c"].read_text() == CMDLINE.replace("line 5", "line five")
    assert snapshot(tree) == before


def test_format_patch_mail_headers_and_signature_are_ignored(tree, tmp_path):
    d = diffapply.parse(MAIL.encode())
    assert len(d.files) == 1 and len(d.files[0].hunks) == 1
    assert d.files[0].hunks[0].header == "@@ -8,3 +8,3 @@"
    out = diffapply.apply(d, tree, tmp_path / "d")
    assert "line nine\nline 10\n" in out["fs/proc/cmdline.c"].read_text()


def test_new_header_file_is_flagged(tree, tmp_path):
    d = diffapply.parse(NEW_FILE)
    (f,) = d.files
    assert f.added and not f.deleted and not f.renamed and f.new_path == "include/linux/kg.h"
    assert d.headers == ("include/linux/kg.h",) and d.translation_units == ()
    out = diffapply.apply(d, tree, tmp_path / "d")
    assert out["include/linux/kg.h"].read_text() == "#define KG 1\n#define KG2 2\n"
    assert not (tree / "include/linux/kg.h").exists()


def test_new_file_that_exists_is_refused(tree, tmp_path):
    (tree / "include/linux/kg.h").write_text("x\n")
    with pytest.raises(UserError, match="already exists"):
        diffapply.apply(diffapply.parse(NEW_FILE), tree, tmp_path / "d")


def test_two_files_and_assembly_flag(tree, tmp_path):
    d = diffapply.parse(TWO_FILES)
    assert d.paths == ("fs/proc/cmdline.c", "arch/x86/kernel/entry.S")
    assert d.assembly == ("arch/x86/kernel/entry.S",)
    out = diffapply.apply(d, tree, tmp_path / "d")
    assert out["arch/x86/kernel/entry.S"].read_text() == "line 1\ninserted\nline 2\n"
    assert d.to_dict()["files"][1]["hunks"] == 1


def test_rename_and_delete_records(tree, tmp_path):
    text = (
        "diff --git a/fs/proc/cmdline.c b/fs/proc/cmd.c\nsimilarity index 100%\n"
        "rename from fs/proc/cmdline.c\nrename to fs/proc/cmd.c\n"
        "diff --git a/arch/x86/kernel/entry.S b/arch/x86/kernel/entry.S\n"
        "deleted file mode 100644\n--- a/arch/x86/kernel/entry.S\n+++ /dev/null\n"
        "@@ -1,2 +0,0 @@\n-line 1\n-line 2\n"
    )
    d = diffapply.parse(text)
    assert d.files[0].renamed and d.files[1].deleted
    assert d.translation_units == ("fs/proc/cmd.o",)
    out = diffapply.apply(d, tree, tmp_path / "d")
    assert out["fs/proc/cmdline.c"] is None and out["arch/x86/kernel/entry.S"] is None
    assert out["fs/proc/cmd.c"].read_text() == CMDLINE


@pytest.mark.parametrize(
    "old, new, what",
    [
        ("a/../etc/passwd", "b/../etc/passwd", "'a/../etc/passwd' escapes the kernel tree"),
        ("/etc/passwd", "/etc/passwd", "'/etc/passwd' is absolute"),
        ("a/fs/../../x.c", "b/fs/../../x.c", "escapes the kernel tree"),
        ('"a/\\056\\056/x.c"', '"b/\\056\\056/x.c"', "escapes the kernel tree"),
        ('"a/x\\000.c"', '"b/x\\000.c"', "NUL byte"),
        ("a/", "b/", "names no file"),
    ],
)
def test_escaping_paths_are_refused(old, new, what):
    text = f"--- {old}\n+++ {new}\n@@ -1 +1 @@\n-a\n+b\n"
    with pytest.raises(UserError, match=what) as err:
        diffapply.parse(text, "fix.diff")
    assert str(err.value).startswith("fix.diff: ") and "\n" not in str(err.value)


def test_escape_in_git_rename_header_is_refused():
    text = "diff --git a/x.c b/x.c\nsimilarity index 100%\nrename from x.c\nrename to ../../x.c\n"
    with pytest.raises(UserError, match="escapes the kernel tree"):
        diffapply.parse(text)


def test_raw_nul_in_hunk_is_refused():
    with pytest.raises(UserError, match="NUL byte"):
        diffapply.parse(b"--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\0\n")


def test_symlink_in_tree_is_refused(tree, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cmdline.c").write_text(CMDLINE)
    os.symlink(outside, tree / "fs/evil")
    text = GOOD.replace("fs/proc/cmdline.c", "fs/evil/cmdline.c")
    d = diffapply.parse(text)
    with pytest.raises(UserError, match="symlink in the kernel tree \\('fs/evil'\\)"):
        diffapply.apply(d, tree, tmp_path / "d")
    assert (outside / "cmdline.c").read_text() == CMDLINE


def test_symlink_file_in_tree_is_refused(tree, tmp_path):
    os.symlink("/etc/hostname", tree / "fs/proc/link.c")
    d = diffapply.parse(GOOD.replace("cmdline.c", "link.c"))
    with pytest.raises(UserError, match="symlink"):
        diffapply.check(d, tree)


@pytest.mark.parametrize("mode_line", ["new mode 120000", "new file mode 120000", "old mode 120000", "new mode 160000"])
def test_mode_change_to_symlink_is_refused(mode_line):
    text = f"diff --git a/x.c b/x.c\nold mode 100644\n{mode_line}\n"
    with pytest.raises(UserError, match="symlink or submodule"):
        diffapply.parse(text)


def test_failing_hunk_names_file_and_hunk(tree, tmp_path):
    text = GOOD + "@@ -8,3 +8,3 @@\n line 8\n-line NINE\n+line 9b\n line 10\n"
    text = text.replace("+++ b/fs/proc/cmdline.c\t2024-01-02 00:00:00\n", "+++ b/fs/proc/cmdline.c\n")
    d = diffapply.parse(text, "fix.diff")
    with pytest.raises(UserError) as err:
        diffapply.apply(d, tree, tmp_path / "d")
    assert str(err.value) == "fix.diff: hunk 2 of fs/proc/cmdline.c (@@ -8,3 +8,3 @@) does not apply"
    assert not (tmp_path / "d").exists()


def test_hunk_at_an_offset_applies(tree, tmp_path):
    (tree / "fs/proc/cmdline.c").write_text("new top\n" * 7 + CMDLINE)
    out = diffapply.apply(diffapply.parse(GOOD), tree, tmp_path / "d")
    assert out["fs/proc/cmdline.c"].read_text() == "new top\n" * 7 + CMDLINE.replace("line 5", "line five")


def test_offset_beyond_the_bound_fails(tree, tmp_path):
    pad = "pad\n" * (diffapply.MAX_OFFSET + 5)
    (tree / "fs/proc/cmdline.c").write_text(pad + CMDLINE)
    with pytest.raises(UserError, match="hunk 1 of fs/proc/cmdline.c"):
        diffapply.apply(diffapply.parse(GOOD), tree, tmp_path / "d")


def test_no_fuzz_one_changed_context_line_fails(tree, tmp_path):
    (tree / "fs/proc/cmdline.c").write_text(CMDLINE.replace("line 7", "line 7 changed"))
    with pytest.raises(UserError, match="does not apply"):
        diffapply.apply(diffapply.parse(GOOD), tree, tmp_path / "d")


def test_no_newline_at_end_of_file(tree, tmp_path):
    (tree / "fs/proc/cmdline.c").write_text("a\nb")
    text = (
        "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n"
    )
    out = diffapply.apply(diffapply.parse(text), tree, tmp_path / "d")
    assert out["fs/proc/cmdline.c"].read_text() == "a\nc\n"


def test_form_feed_lines_are_kept_whole(tree, tmp_path):
    (tree / "fs/proc/cmdline.c").write_text("a\n\f\nb\n")
    text = "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1,3 +1,3 @@\n a\n \f\n-b\n+c\n"
    out = diffapply.apply(diffapply.parse(text), tree, tmp_path / "d")
    assert out["fs/proc/cmdline.c"].read_text() == "a\n\f\nc\n"


@pytest.mark.parametrize(
    "binary",
    [
        "GIT binary patch\nliteral 4\nLcmZ?d00001\n",
        "Binary files a/x.c and b/x.c differ\n",
    ],
)
def test_binary_patch_is_refused(binary):
    text = "diff --git a/x.c b/x.c\nindex 1..2 100644\n" + binary
    with pytest.raises(UserError, match="binary patch refused"):
        diffapply.parse(text)


@pytest.mark.parametrize(
    "garbage, what",
    [
        (b"", "no file changes found"),
        (b"hello world\nthis is not a diff\n", "no file changes found"),
        (bytes(range(256)) * 4, "no file changes found"),
        (b"--- a/x.c\n+++ b/x.c\n", "no hunks"),
        (b"--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n a\n", "truncated hunk"),
        (b"--- a/x.c\n+++ b/x.c\n@@ bogus @@\n a\n", "malformed hunk header"),
        (b"--- a/x.c\n+++ b/x.c\n@@ -1,2 +1,2 @@\n a\n?b\n", "malformed hunk"),
        (b"--- /dev/null\n+++ /dev/null\n@@ -0,0 +1 @@\n+a\n", "both sides"),
        (b"diff --git a/x.c b/x.c\nnew file mode 100644\ndeleted file mode 100644\n", "both created and deleted"),
    ],
)
def test_garbage_input(garbage, what):
    with pytest.raises(UserError, match=what):
        diffapply.parse(garbage, "fix.diff")


def test_load_names_the_file(tmp_path):
    p = tmp_path / "fix.diff"
    p.write_text(GOOD.replace("a/fs", "a/../fs"))
    with pytest.raises(UserError, match="^fix.diff: path 'a/../fs/proc/cmdline.c' escapes"):
        diffapply.load(p)
    with pytest.raises(UserError, match="cannot read"):
        diffapply.load(tmp_path / "missing.diff")
