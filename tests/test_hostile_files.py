"""Hostile input: what a build container writes is never followed or read as anything but a regular
file, and a diff that changes the build itself is refused unless --allow-build-files says so."""

import io
import json
import os
import tarfile

import pytest
from click.testing import CliRunner
from sample_manifest import IMAGE, NoEngine, sample, saved_env

from kgenv import manifest
from kgenv.build import diffapply, pipeline
from kgenv.build import report as build_report
from kgenv.build.compile import compile_tus
from kgenv.build.kbuild import build_module
from kgenv.build.source import read_facts
from kgenv.cli import build as cli_build
from kgenv.cli import cli
from kgenv.errors import ToolError
from kgenv.fsutil import copy_regular, read_regular
from kgenv.runtime.base import RunResult

SECRET = b"host-only secret\n"
CMDLINE_DIFF = "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n"
MAKEFILE_HUNK = "--- a/fs/proc/Makefile\n+++ b/fs/proc/Makefile\n@@ -0,0 +1 @@\n+$(shell id > /tmp/x)\n"


@pytest.fixture
def secret(tmp_path):
    s = tmp_path / "host-only" / "secret"
    s.parent.mkdir()
    s.write_bytes(SECRET)
    return s


def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# -- fsutil: the one safe reader ------------------------------------------------------------------


def test_read_regular_reads_a_regular_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"ok")
    assert read_regular(tmp_path / "a" / "f") == b"ok"
    assert read_regular(tmp_path / "a" / "f", root=tmp_path) == b"ok"


def test_read_regular_refuses_a_symlink(tmp_path, secret):
    link = tmp_path / ".cmdline.o.cmd"
    link.symlink_to(secret)
    with pytest.raises(ToolError, match="is a symlink; refusing to follow it") as e:
        read_regular(link)
    assert one_line(e).startswith(str(link))
    with pytest.raises(ToolError, match="symlink"):
        read_regular(link, root=tmp_path)


def test_read_regular_refuses_a_symlinked_directory_below_root(tmp_path, secret):
    out = tmp_path / "out"
    (out / "fs").mkdir(parents=True)
    (out / "fs" / "proc").symlink_to(secret.parent)  # fs/proc -> a host directory
    with pytest.raises(ToolError, match="proc is a symlink or not a directory") as e:
        read_regular(out / "fs" / "proc" / "secret", root=out)
    one_line(e)


@pytest.mark.parametrize("kind", ["fifo", "dir", "dev"])
def test_read_regular_refuses_special_files_without_blocking(tmp_path, kind):
    p = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(p)  # an open() without O_NONBLOCK would hang here forever
    elif kind == "dir":
        p.mkdir()
    else:
        p = tmp_path / "null"
        p.symlink_to("/dev/null")
    with pytest.raises(ToolError) as e:
        read_regular(p)
    assert one_line(e).startswith(str(p))


def test_copy_regular_writes_a_fresh_file_and_does_not_follow_the_destination(tmp_path, secret):
    src = tmp_path / "src"
    src.write_bytes(b"new")
    dest = tmp_path / "dest"
    dest.symlink_to(secret)  # a stale symlink at the destination is replaced, not written through
    copy_regular(src, dest)
    assert dest.read_bytes() == b"new" and not dest.is_symlink()
    assert secret.read_bytes() == SECRET


# -- every place the build reads what a container wrote -------------------------------------------


class Planting:
    """A runtime whose 'container' writes into the first read-write mount: `plant(host_dir)`."""

    name = "fake"

    def __init__(self, plant):
        self.plant = plant
        self.runs = 0

    def image_id(self, ref):
        return IMAGE

    def run(self, image, command, mounts=(), env=None, workdir="/", progress=None):
        self.runs += 1
        rw = next(m for m in mounts if not m.read_only)
        self.plant(rw.host)
        return RunResult(0, "")


def test_compile_refuses_a_planted_cmd_symlink(tmp_path, secret):
    def plant(out):
        (out / "fs" / "proc").mkdir(parents=True)
        (out / "fs" / "proc" / "cmdline.o").write_bytes(b"\x7fELF")
        (out / "fs" / "proc" / ".cmdline.o.cmd").symlink_to(secret)

    outdir = tmp_path / "orig"
    with pytest.raises(ToolError, match="cmdline.o.cmd: is a symlink; refusing to follow it") as e:
        compile_tus(Planting(plant), sample(), ["fs/proc/cmdline.o"], outdir)
    one_line(e)
    found = [p for p in outdir.rglob("*") if p.is_file() and p.read_bytes() == SECRET]
    assert not found and not (outdir / ".kgenv-container").exists()


def test_compile_refuses_a_symlinked_output_directory(tmp_path, secret):
    (secret.parent / "cmdline.o").write_bytes(b"host object")
    (secret.parent / ".cmdline.o.cmd").write_bytes(SECRET)

    def plant(out):
        (out / "fs").mkdir()
        (out / "fs" / "proc").symlink_to(secret.parent)

    with pytest.raises(ToolError, match="symlink or not a directory"):
        compile_tus(Planting(plant), sample(), ["fs/proc/cmdline.o"], tmp_path / "orig")
    assert not (tmp_path / "orig" / "fs" / "proc" / ".cmdline.o.cmd").exists()


def test_compile_copies_regular_outputs(tmp_path):
    def plant(out):
        (out / "fs" / "proc").mkdir(parents=True)
        (out / "fs" / "proc" / "cmdline.o").write_bytes(b"obj")
        (out / "fs" / "proc" / ".cmdline.o.cmd").write_text("cmd_fs/proc/cmdline.o := gcc\n")

    got = compile_tus(Planting(plant), sample(), ["fs/proc/cmdline.o"], tmp_path / "orig")
    assert got["fs/proc/cmdline.o"].read_bytes() == b"obj"
    assert (tmp_path / "orig" / "fs" / "proc" / ".cmdline.o.cmd").is_file()
    assert oct((tmp_path / "orig" / "fs" / "proc" / "cmdline.o").stat().st_mode & 0o777) == "0o644"


def test_module_build_refuses_a_planted_ko_symlink(tmp_path, secret):
    src = tmp_path / "module"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m += x.o\n")
    rt = Planting(lambda work: (work / "livepatch-x.ko").symlink_to(secret))
    with pytest.raises(ToolError, match="livepatch-x.ko: is a symlink") as e:
        build_module(rt, sample(), src, tmp_path / "out")
    one_line(e)
    assert not (tmp_path / "out" / "livepatch-x.ko").exists()


def test_libclang_facts_are_read_as_regular_files_only(tmp_path, secret):
    cmd = tmp_path / "tu.cmd"
    cmd.write_text("cmd := gcc\n")

    def plant(out):
        (out / "original.json").symlink_to(secret)

    with pytest.raises(ToolError, match="original.json: is a symlink"):
        read_facts(Planting(plant), sample(), "fs/proc/cmdline.c", None, cmd, tmp_path / "w")


# -- the CLI: a planted files.tar, build files ------------------------------------------------------


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A saved env whose Module.symvers is in the cache with its true hash."""
    return saved_env(tmp_path, monkeypatch, "hostile-env", {"symvers": "0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\n"})


def build(monkeypatch, rt, *args):
    monkeypatch.setattr(cli_build, "make_runtime", lambda name, m: rt)
    return CliRunner().invoke(cli, ["build", *map(str, args)])


def errors(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if not ln.startswith("[")]  # progress lines aside


def test_a_planted_files_tar_symlink_is_not_read(tmp_path, monkeypatch, env, secret):
    host_tar = secret.parent / "files.tar"  # a host file that happens to be a tar: never to be read
    with tarfile.open(host_tar, "w") as tar:
        info = tarfile.TarInfo("fs/proc/cmdline.c")
        info.size = len(SECRET)
        tar.addfile(info, io.BytesIO(SECRET))
    rt = Planting(lambda out: (out / "files.tar").symlink_to(host_tar))
    diff = tmp_path / "fix.diff"
    diff.write_text(CMDLINE_DIFF)
    r = build(monkeypatch, rt, diff, "--env", env.name, "-o", tmp_path / "out")
    assert r.exit_code == 2, (r.output, r.exception)
    (line,) = errors(r)
    assert line.startswith("kgenv: ") and line.endswith("files.tar: is a symlink; refusing to follow it")
    rep = build_report.load(tmp_path / "out" / "report.json")
    assert rep.result.outcome == "error" and "files.tar: is a symlink" in rep.result.reason
    assert not [p for p in tmp_path.joinpath("out").rglob("*") if p.is_file() and SECRET in p.read_bytes()]


@pytest.mark.parametrize(
    "path",
    ["fs/proc/Makefile", "fs/proc/Kbuild", "init/Kconfig", "arch/x86/Kconfig.debug", "tools/x.mk", "scripts/x.c"],
)
def test_build_files_are_recognised(path):
    assert diffapply.is_build_file(path)


@pytest.mark.parametrize("path", ["fs/proc/cmdline.c", "include/linux/kconfig.h", "fs/makefile.c", "arch/scripts.c"])
def test_ordinary_files_are_not_build_files(path):
    assert not diffapply.is_build_file(path)


def test_a_makefile_change_is_refused_before_any_container_runs(tmp_path, monkeypatch, env):
    diff = tmp_path / "fix.diff"
    diff.write_text(CMDLINE_DIFF + MAKEFILE_HUNK)
    r = build(monkeypatch, NoEngine("a refused build ran a container"), diff, "--env", env.name, "-o", tmp_path / "out")
    assert r.exit_code == 1, (r.output, r.exception)
    assert "REFUSED: fix for " in r.stdout
    rep = build_report.load(tmp_path / "out" / "report.json")
    assert rep.result.outcome == "refused" and rep.result.exit_code == 1
    assert rep.result.reason.endswith(  # after the refusal class, where the reason names one
        f"{diff}: changes build file(s) fs/proc/Makefile, which make runs as root in the build container; "
        "review them and pass --allow-build-files"
    )
    assert not rep.fix.notes and "notes" not in json.loads((tmp_path / "out" / "report.json").read_text())["fix"]


def test_allow_build_files_goes_on_and_says_so_in_the_report(tmp_path, monkeypatch, env):
    class Fails(Planting):
        def run(self, *args, **kwargs):
            self.runs += 1
            return RunResult(1, "no tree here")

    rt = Fails(None)
    diff = tmp_path / "fix.diff"
    diff.write_text(CMDLINE_DIFF + MAKEFILE_HUNK)
    r = build(monkeypatch, rt, diff, "--env", env.name, "-o", tmp_path / "out", "--allow-build-files")
    assert rt.runs == 1 and r.exit_code == 2  # it went on to read the tree (which this fake lacks)
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["fix"]["notes"] == ["build file(s) changed, allowed by --allow-build-files: fs/proc/Makefile"]
    assert "--allow-build-files" in doc["kgenv"]["reproducer"]
    assert build_report.load(tmp_path / "out" / "report.json").fix.notes == tuple(doc["fix"]["notes"])


def test_pipeline_refuses_build_files_without_the_option(tmp_path, env):
    diff = tmp_path / "fix.diff"
    diff.write_text(CMDLINE_DIFF.replace("cmdline.c", "Kbuild"))
    req = pipeline.Request(diff=diff, env=manifest.load(env.name), outdir=tmp_path / "out", name="fix")
    result = pipeline.build(req, NoEngine("a refused build ran a container"))
    assert result.exit_code == 1 and "changes build file(s) fs/proc/Kbuild" in result.report.result.reason


def test_audit_does_not_take_a_planted_object_symlink(tmp_path, secret):
    from kgenv.audit.rebuild import rebuild
    from kgenv.audit.records import Candidate

    class Runner:
        def run(self, script, outdir=None, progress=None):
            (outdir / "fs" / "proc").mkdir(parents=True)
            (outdir / "fs" / "proc" / "cmdline.o").symlink_to(secret)
            (outdir / "fs" / "proc" / "array.o").write_bytes(b"\x7fELF")
            return RunResult(0, "BUILT=fs/proc/cmdline.o\nBUILT=fs/proc/array.o\n")

    got = rebuild(
        Runner(),
        sample(),
        Candidate("image", "x", cc="gcc-12"),
        ["fs/proc/cmdline.o", "fs/proc/array.o"],
        tmp_path / "o",
    )
    assert got[0].object is None and "is a symlink" in got[0].error
    assert got[1].object == tmp_path / "o" / "fs" / "proc" / "array.o"


# -- a diff path through a symlink of the env's tree (the objtree's `source`) ------------------------

OBJ_SOURCE = "debian/build/build_amd64_none_amd64/source"


def tree_tar(out, victim):
    """files.tar as the env's tree gives it for a path through the objtree's absolute `source` link:
    the link, then the file reached through it (tar -T follows nothing but lists both)."""
    with tarfile.open(out / "files.tar", "w") as tar:
        for d in ("debian", "debian/build", "debian/build/build_amd64_none_amd64"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        link = tarfile.TarInfo(OBJ_SOURCE)
        link.type, link.linkname = tarfile.SYMTYPE, str(victim)
        tar.addfile(link)
        info = tarfile.TarInfo(f"{OBJ_SOURCE}/fs/proc/cmdline.c")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"a\n"))


def test_a_diff_through_the_objtree_source_symlink_is_refused_in_one_line(tmp_path, monkeypatch, env):
    victim = tmp_path / "victim"  # where the absolute link points on the host: never written
    victim.mkdir()
    diff = tmp_path / "fix.diff"
    diff.write_text(CMDLINE_DIFF.replace("fs/proc/cmdline.c", f"{OBJ_SOURCE}/fs/proc/cmdline.c"))
    r = build(monkeypatch, Planting(lambda out: tree_tar(out, victim)), diff, "--env", env.name, "-o", tmp_path / "out")
    assert r.exit_code == 2, (r.output, r.exception)
    assert errors(r) == [
        f"kgenv: fix.diff: path '{OBJ_SOURCE}/fs/proc/cmdline.c' goes through a symlink in the kernel tree "
        f"('{OBJ_SOURCE}')"
    ]
    assert build_report.load(tmp_path / "out" / "report.json").result.outcome == "error"
    assert list(victim.iterdir()) == []


def test_extract_writes_nothing_below_or_through_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    tree_tar(tmp_path, victim)
    with tarfile.open(tmp_path / "files.tar") as tar:
        pipeline._extract(tar, tmp_path / "tree")
    link = tmp_path / "tree" / OBJ_SOURCE
    assert link.is_symlink() and os.readlink(link) == pipeline.UNFOLLOWED
    assert list(victim.iterdir()) == []
