"""Hostile input: -o is checked before any work; a run's outputs replace the previous run's as a
whole (a refusal leaves no older module behind) and kgenv never deletes what it did not write;
outputs are 0644."""

import errno
import hashlib
import json
import os
import stat

import pytest
from click.testing import CliRunner
from sample_manifest import IMAGE, NoEngine, saved_env

from kgenv.build import pipeline
from kgenv.build import report as build_report
from kgenv.cli import build as cli_build
from kgenv.cli import cli
from kgenv.errors import UserError
from kgenv.fsutil import sha256_file, write_atomic

# refused at the diff stage (a build file), before any container would run
REFUSED_DIFF = "--- a/fs/proc/Makefile\n+++ b/fs/proc/Makefile\n@@ -0,0 +1 @@\n+x\n"


@pytest.fixture
def env(tmp_path, monkeypatch):
    m = saved_env(tmp_path, monkeypatch, "outputs-env", {"symvers": ""})
    monkeypatch.setattr(cli_build, "make_runtime", lambda name, env: NoEngine())
    diff = tmp_path / "fix.diff"
    diff.write_text(REFUSED_DIFF)
    return m, diff


def run(*args):
    return CliRunner().invoke(cli, ["build", *map(str, args)])


# -- -o first --------------------------------------------------------------------------------------


def test_o_naming_a_file_is_an_error_before_anything_else(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("keep me\n")
    r = run(tmp_path / "missing.diff", "--env", "no-such-env", "-o", f)  # -o is judged first
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [f"kgenv: -o {f}: not a directory"]
    assert f.read_text() == "keep me\n"


@pytest.mark.parametrize("where", ["/proc", "/proc/self", "/sys/kernel"])
def test_o_in_a_pseudo_file_system_is_an_error(tmp_path, where):
    r = run(tmp_path / "missing.diff", "--env", "no-such-env", "-o", where)
    assert r.exit_code == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"kgenv: -o {where}: cannot write there (")


def test_o_below_a_file_is_an_error(tmp_path):
    (tmp_path / "f").write_text("")
    r = run(tmp_path / "missing.diff", "--env", "x", "-o", tmp_path / "f" / "out")
    assert r.exit_code == 2 and r.stderr.startswith(f"kgenv: -o {tmp_path / 'f' / 'out'}: ")


def test_a_usage_error_leaves_no_new_output_directory(tmp_path):
    r = run(tmp_path / "missing.diff", "--env", "x", "-o", tmp_path / "new" / "out")
    assert r.exit_code == 2 and r.stderr.strip() == f"kgenv: {tmp_path / 'missing.diff'}: no such diff file"
    assert not (tmp_path / "new").exists()


def test_check_outdir_leaves_no_probe_behind(tmp_path):
    pipeline.check_outdir(tmp_path / "new" / "out")
    assert list((tmp_path / "new" / "out").iterdir()) == []
    (tmp_path / "x").write_text("")
    with pytest.raises(UserError, match=f"^-o {tmp_path / 'x'}: not a directory$"):
        pipeline.check_outdir(tmp_path / "x")


# -- a refusal replaces the last run's outputs ------------------------------------------------------


def previous_build(out, name="old"):
    """What a built run of kgenv left: module, sources, Kbuild, report and its outputs record."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for fname, data in [
        (f"livepatch-{name}.ko", b"\x7fELF old module"),
        (f"{name}.c", b"/* registration */"),
        (f"{name}-fs_proc_cmdline.c", b"/* generated */"),
        ("Kbuild", b"obj-m += x.o\n"),
    ]:
        (out / fname).write_bytes(data)
        written[fname] = hashlib.sha256(data).hexdigest()
    (out / pipeline.OUTPUTS).write_text(json.dumps(written))
    (out / "report.json").write_text("{}")
    return written


def test_a_refusal_removes_the_previous_module_and_keeps_other_files(tmp_path, env):
    m, diff = env
    out = tmp_path / "out"
    previous_build(out)
    (out / "NOTES.txt").write_text("mine\n")  # not kgenv's
    (out / "livepatch-mine.ko").write_text("a module kgenv did not write")
    r = run(diff, "--env", m.name, "-o", out)
    assert r.exit_code == 1, (r.output, r.exception)
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.txt", "livepatch-mine.ko", "report.json"]
    assert build_report.load(out / "report.json").result.outcome == "refused"


def test_an_edited_output_is_not_kgenvs_any_more(tmp_path, env):
    m, diff = env
    out = tmp_path / "out"
    previous_build(out)
    (out / "Kbuild").write_text("edited by hand\n")
    assert run(diff, "--env", m.name, "-o", out).exit_code == 1
    assert (out / "Kbuild").read_text() == "edited by hand\n" and not (out / "livepatch-old.ko").exists()


def test_a_forged_outputs_record_cannot_reach_outside(tmp_path, env):
    m, diff = env
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.write_text("keep\n")
    (out / "link.ko").symlink_to(victim)
    digest = sha256_file(victim)
    (out / pipeline.OUTPUTS).write_text(json.dumps({"../victim": digest, "link.ko": digest, str(victim): digest}))
    assert run(diff, "--env", m.name, "-o", out).exit_code == 1
    assert victim.read_text() == "keep\n" and (out / "link.ko").is_symlink()


def test_a_report_from_before_the_outputs_record_still_identifies_its_module(tmp_path, env):
    m, diff = env
    out = tmp_path / "out"
    previous_build(out)
    (out / pipeline.OUTPUTS).unlink()
    ko = out / "livepatch-old.ko"
    doc = {
        "kgenv": {"version": "0", "reproducer": "kgenv build"},
        "env": {"name": "e", "image_id": IMAGE, "kernel_release": "r", "build_id": "b", "version": "v"},
        "fix": {"name": "old", "diff": "d", "diff_sha256": "", "files": [], "tus": ["fs/proc/cmdline.o"]},
        "result": {
            "outcome": "built",
            "exit_code": 0,
            "reason": "",
            "module": str(ko),
            "module_sha256": sha256_file(ko),
            "klp_symbols": [],
        },
        "functions": [],
        "stages": {},
    }
    (out / "report.json").write_text(json.dumps(doc))
    (out / "other.c").write_text("not named by the report\n")
    sources = sorted(p.name for p in out.iterdir() if p.name not in ("livepatch-old.ko", "report.json"))
    assert run(diff, "--env", m.name, "-o", out).exit_code == 1
    # only the module, whose hash the report recorded, goes; sources a user may have edited stay
    assert sorted(p.name for p in out.iterdir()) == sorted([*sources, "report.json"])
    assert "other.c" in sources and "Kbuild" in sources


def test_the_outputs_record_lists_what_the_hand_off_wrote(tmp_path, env):
    m, _ = env
    b = pipeline.Build(pipeline.Request(tmp_path / "d.diff", m, tmp_path / "out", "fix"), NoEngine())
    (b.tmp / "module").mkdir()
    (b.tmp / "module" / "fix.c").write_text("c")
    (b.tmp / "module" / "Kbuild").write_text("k")
    ko = b.tmp / "built.ko"
    ko.write_bytes(b"ko")
    assert b._hand_off(ko) == tmp_path / "out" / "livepatch-fix.ko"
    assert b.written == {n: sha256_file(tmp_path / "out" / n) for n in ("fix.c", "Kbuild", "livepatch-fix.ko")}
    for n in b.written:
        assert stat.S_IMODE((tmp_path / "out" / n).stat().st_mode) == 0o644


# -- 0644 -----------------------------------------------------------------------------------------


def test_write_atomic_leaves_0644_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "report.json", "{}")
        write_atomic(tmp_path / "excl", "x", exclusive=True)
    finally:
        os.umask(old)
    for n in ("report.json", "excl"):
        assert stat.S_IMODE((tmp_path / n).stat().st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_report_written_by_a_refused_build_is_world_readable(tmp_path, env):
    m, diff = env
    assert run(diff, "--env", m.name, "-o", tmp_path / "out").exit_code == 1
    assert stat.S_IMODE((tmp_path / "out" / "report.json").stat().st_mode) == 0o644


def test_an_outputs_record_without_hashes_names_nothing_to_delete(tmp_path, env):
    m, diff = env
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("the user's\n")
    (out / pipeline.OUTPUTS).write_text(json.dumps({"precious.txt": "", "other": "not-a-hash"}))
    assert run(diff, "--env", m.name, "-o", out).exit_code == 1
    assert (out / "precious.txt").read_text() == "the user's\n"


# -- a full disk at hand-off: all outputs or none, one line naming OUTDIR ----------------------------

ENOSPC_LINE = "cannot write the outputs (No space left on device); the partial outputs were removed"


def failing_write(monkeypatch, last_name):
    """write_atomic that fills the disk when it reaches `last_name` (the earlier files got written)."""

    def write(path, data, **kw):
        if path.name == last_name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write_atomic(path, data, **kw)

    monkeypatch.setattr(pipeline, "write_atomic", write)


def built_stages(self):
    """The stages of a build that got as far as its hand-off (module, sources and Kbuild in tmp)."""
    (self.tmp / "module").mkdir()
    (self.tmp / "module" / f"{self.req.name}.c").write_text("c")
    (self.tmp / "module" / "Kbuild").write_text("k")
    ko = self.tmp / "built.ko"
    ko.write_bytes(b"\x7fELF")
    return self._hand_off(ko)


def test_a_failed_hand_off_takes_back_what_it_wrote(tmp_path, env, monkeypatch):
    m, _ = env
    out = tmp_path / "out"
    b = pipeline.Build(pipeline.Request(tmp_path / "d.diff", m, out, "fix"), NoEngine())
    (b.tmp / "module").mkdir()
    (b.tmp / "module" / "fix.c").write_text("c")
    (b.tmp / "module" / "Kbuild").write_text("k")
    (b.tmp / "built.ko").write_bytes(b"ko")
    failing_write(monkeypatch, "livepatch-fix.ko")
    with pytest.raises(UserError) as e:
        b._hand_off(b.tmp / "built.ko")
    assert str(e.value) == f"{out}: {ENOSPC_LINE}"
    assert list(out.iterdir()) == [] and b.written == {}


@pytest.mark.parametrize("fails", ["livepatch-fix.ko", "Kbuild"])
def test_a_full_disk_at_hand_off_is_one_line_and_a_report_without_outputs(tmp_path, env, monkeypatch, fails):
    m, diff = env
    out = tmp_path / "out"
    monkeypatch.setattr(pipeline.Build, "_stages", built_stages)
    failing_write(monkeypatch, fails)
    r = run(diff, "--env", m.name, "-o", out, "--name", "fix")
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.stderr.strip().splitlines()[-1] == f"kgenv: {out}: {ENOSPC_LINE}"
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    rep = build_report.load(out / "report.json")
    assert rep.result.outcome == "error" and rep.result.module == ""


def test_a_full_disk_for_the_report_leaves_no_module_either(tmp_path, env, monkeypatch):
    m, diff = env
    out = tmp_path / "out"
    monkeypatch.setattr(pipeline.Build, "_stages", built_stages)
    failing_write(monkeypatch, "report.json")
    r = run(diff, "--env", m.name, "-o", out, "--name", "fix")
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.stderr.strip().splitlines() == [f"kgenv: {out}: {ENOSPC_LINE}"]
    assert list(out.iterdir()) == []


# -- report.json also when the engine is down -------------------------------------------------------


def test_an_unreachable_engine_still_writes_report_json(tmp_path, monkeypatch):
    m = saved_env(tmp_path, monkeypatch, "engine-env", {"symvers": ""})
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    diff = tmp_path / "fix.diff"
    diff.write_text("--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n")
    r = run(diff, "--env", m.name, "-o", tmp_path / "out")  # the real make_runtime: Docker, not answering
    assert r.exit_code == 2, (r.output, r.exception)
    (line,) = [ln for ln in r.stderr.splitlines() if not ln.startswith("[")]
    assert line.startswith("kgenv: unix:///nonexistent/docker.sock: ")
    rep = build_report.load(tmp_path / "out" / "report.json")
    assert rep.result.outcome == "error" and rep.result.exit_code == 2
    assert rep.result.reason == line.removeprefix("kgenv: ") and list(rep.stages) == ["check"]


def test_a_closed_progress_reader_does_not_stop_the_work():
    """`kgenv build … 2>&1 | head`: once the reader is gone, progress falls silent; the build goes on."""
    import io

    from kgenv.progress import Progress

    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    p = Progress(stream=Closed())
    p.step("compile")
    p.tick("make")
    p.step("changes")
    assert p.quiet
