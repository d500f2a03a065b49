"""The one `.cmd` parser: make escapes, shell words, the compile before `;`, and its callers' round trips."""

import subprocess

import pytest

from kgenv.build import skeleton
from kgenv.env import kbuildcmd
from kgenv.errors import ToolError

# what Kbuild's make-cmd writes for: gcc -DX='"$(pound)"' -DH=#1 -DP='$x' ... (6.1 style escapes)
CMD = (
    "gcc -Wp,-MMD,a.d -DX='\"$$(pound)\"' -DH=$(pound)1 -DP='$$x' -DQ='a;b' -I ./inc -c -o a.o a.c"
    " ; ./tools/objtool/objtool orc generate a.o"
)
WORDS = [
    "gcc",
    "-Wp,-MMD,a.d",
    '-DX="$(pound)"',
    "-DH=#1",
    "-DP=$x",
    "-DQ=a;b",
    "-I",
    "./inc",
    "-c",
    "-o",
    "a.o",
    "a.c",
]


def test_make_escapes_are_undone_left_to_right_and_redone():
    assert kbuildcmd.make_unescape("$$(pound) $(pound) $$$$ $(CC)") == "$(pound) # $$ $(CC)"
    for text in ("$(pound) # $$ $x", "plain", "a$$(pound)#"):
        assert kbuildcmd.make_unescape(kbuildcmd.make_escape(text)) == text


def test_words_as_the_shell_gets_them():
    words = kbuildcmd.tokens(CMD)
    assert words[: len(WORDS)] == WORDS and words[len(WORDS)] == ";"
    assert kbuildcmd.tokens("gcc -c a.c;objtool a.o") == ["gcc", "-c", "a.c", ";", "objtool", "a.o"]
    assert kbuildcmd.tokens(r"gcc -DH=\#1 -DS='a b'") == ["gcc", "-DH=#1", "-DS=a b"]  # an older Kbuild's '\#'
    assert kbuildcmd.tokens("gcc -DX='unbalanced") == ["gcc", "-DX='unbalanced"]


@pytest.mark.parametrize("key", ["cmd_", "savedcmd_"])
def test_read_command_is_the_compile_before_the_first_semicolon(tmp_path, key):
    f = tmp_path / ".a.o.cmd"
    f.write_text(f"{key}fs/a.o := {CMD}\n\nsource_fs/a.o := /s/fs/a.c\n\ndeps_fs/a.o := \\\n  x.h \\\n")
    assert kbuildcmd.read_command(f) == WORDS
    f.write_text("cmd_a.o := gcc -c a.c;objtool a.o\n")
    assert kbuildcmd.read_command(str(f)) == ["gcc", "-c", "a.c"]


@pytest.mark.parametrize("text", ["deps_a.o := \\\n  x.h\n", "cmd_a.o := \n", "", "# cmd_a.o := gcc\n"])
def test_no_recorded_command_is_one_line_naming_the_file(tmp_path, text):
    f = tmp_path / ".a.o.cmd"
    f.write_text(text)
    with pytest.raises(ToolError) as e:
        kbuildcmd.read_command(f)
    assert str(e.value) == f"{f}: no compile command recorded (a cmd_ or savedcmd_ line)"
    with pytest.raises(ToolError, match=f"^{tmp_path}/none.cmd: cannot read: No such file"):
        kbuildcmd.read_command(tmp_path / "none.cmd")


def test_kcflags_keep_make_escapes_for_the_make_line():
    mark = "gcc -nostdinc -D__KERNEL__ -O2 {k}-c -o a.o a.c"
    marked = mark.format(k=kbuildcmd.KCFLAGS_MARK + " ")
    vendor = mark.format(k="-DV='\"$$x\"' -DH=$(pound)1 ")
    assert kbuildcmd.derive_kcflags(vendor, marked, "x") == "'-DV=\"$$x\"' '-DH=$(pound)1'"


def test_kbuild_file_gives_gcc_the_words_back(tmp_path):
    """A TU's flags, written into the generated Kbuild, reach the compiler as the same words: make
    expands them into a recipe that a shell splits, as Kbuild's own compile rule does."""
    flags = ["-I/s/inc", '-DX="$(pound)"', "-DH=#1", "-DP=$x", '-DSTR="fs/proc"', "-DS=a b"]
    kbuild = skeleton.render_kbuild("t", "t.c", [skeleton.Source("t-a.c", tuple(flags))])
    assert "-I/s/inc '-DX=\"$$(pound)\"' '-DH=$(pound)1' '-DP=$$x'" in kbuild
    recipe = "\nall:\n\t@printf '%s\\n' $(CFLAGS_t-a.o)\n"
    (tmp_path / "Makefile").write_text("pound := \\#\n" + kbuild + recipe)
    out = subprocess.run(["make", "-s", "-C", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == flags + ["-Wno-unused-function", "-Wno-unused-variable", "-Werror=pragmas"]
