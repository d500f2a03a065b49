"""A fix that does not compile is input (refused, exit 1); an original that does not is the env's error."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from kgenv.build import pipeline
from kgenv.build.compile import CompileError, first_error
from kgenv.errors import ToolError

SRC = "/build/reproducible-path/linux-6.1.192"
# as compile_tus's container prints a failure: the first error line (grep), then the log's tail
OUTPUT = f"""\
fs/proc/version.c:18:40: error: 'machin' undeclared (first use in this function); did you mean 'machine'?
  CC      fs/proc/version.o
{SRC}/fs/proc/version.c: In function 'version_proc_show':
{SRC}/fs/proc/version.c:12:9: warning: unused variable 'machine' [-Wunused-variable]
{SRC}/fs/proc/version.c:18:40: error: 'machin' undeclared (first use in this function); did you mean 'machine'?
{SRC}/fs/proc/version.c:19:1: error: expected ';' before '}}' token
make[3]: *** [scripts/Makefile.build:250: fs/proc/version.o] Error 1
"""


def test_first_error_is_the_compilers_first_error_line():
    assert first_error(OUTPUT, SRC) == (
        "fs/proc/version.c:18:40: error: 'machin' undeclared (first use in this function); did you mean 'machine'?"
    )
    assert first_error("x.c:3: fatal error: nosuch.h: No such file or directory\n") == (
        "x.c:3: fatal error: nosuch.h: No such file or directory"
    )
    assert first_error("a.c:1:2: error: \x1b[31mred\x07\n") == "a.c:1:2: error: ?[31mred?"  # one printable line
    assert len(first_error("a.c:1:2: error: " + "x" * 1000)) == 300


@pytest.mark.parametrize(
    "output",
    [
        "make[3]: *** [scripts/Makefile.build:250: fs/proc/version.o] Error 1\n",
        "Killed\n",
        "fs/proc/version.o: warning: objtool: version_proc_show() falls through to next function\n",
        "",
    ],
)
def test_no_compiler_error_no_first_error(output):
    assert first_error(output, SRC) == ""


def _build(tmp_path: Path, orig, patched):
    """A Build at its compile stage and a compile_tus whose two runs raise `orig` and `patched`
    (or succeed for None)."""
    b = pipeline.Build.__new__(pipeline.Build)
    b.req = SimpleNamespace(jobs=2)
    b.rt, b.m, b.tmp = object(), object(), tmp_path
    b.units = [pipeline.Unit("fs/proc/version.o", "fs/proc/version.c")]

    def compile_tus(rt, m, tus, outdir, *, overlay=None, extra_cflags=""):
        exc = patched if overlay else orig
        if exc:
            raise exc
        return {t: outdir / t for t in tus}

    return b, compile_tus


def test_patched_failing_alone_is_refused(tmp_path, monkeypatch):
    b, fake = _build(tmp_path, None, CompileError("compile failed:\n" + OUTPUT, first_error(OUTPUT, SRC)))
    monkeypatch.setattr(pipeline, "compile_tus", fake)
    with pytest.raises(pipeline.Refusal) as exc:
        b._compile(tmp_path / "overlay")
    line = str(exc.value)
    assert line.startswith(f"{pipeline.NO_COMPILE}: the patched fs/proc/version.c does not compile")
    assert (
        line.endswith(
            "fs/proc/version.c:18:40: error: 'machin' undeclared (first use in this function); did you mean 'machine'?"
        )
        and "\n" not in line
    )


@pytest.mark.parametrize(
    "orig, patched",
    [
        (CompileError("orig failed", "fs/proc/version.c:1:1: error: x"), None),  # the env's tree does not build
        (CompileError("orig failed", "a.c:1:1: error: x"), CompileError("patched failed", "a.c:1:1: error: x")),
        (None, CompileError("patched failed: Killed", "")),  # no compiler error: not the fix's fault
    ],
)
def test_other_compile_failures_stay_errors(tmp_path, monkeypatch, orig, patched):
    b, fake = _build(tmp_path, orig, patched)
    monkeypatch.setattr(pipeline, "compile_tus", fake)
    with pytest.raises(ToolError) as exc:
        b._compile(tmp_path / "overlay")
    assert not isinstance(exc.value, pipeline.Refusal)
