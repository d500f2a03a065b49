"""The farm's own logic with a tiny real job: plans, keys, cache, parallel bound, Ctrl-C, matrix, exit codes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from farm_helpers import BAD_C, OK_C, ROOT, make_envs, runs, tiny_engine, write_plan

from kgenv.errors import UserError
from kgenv.farm import matrix
from kgenv.farm import plan as plans
from kgenv.farm.identity import kgenv_identity
from kgenv.farm.job import Job
from kgenv.farm.run import Farm
from kgenv.farm.store import Store

KERNELS = ["tiny-k1", "tiny-k2"]


@pytest.fixture
def farm_dir(tmp_path, monkeypatch):
    envs = tmp_path / "envs"
    envs.mkdir()
    monkeypatch.setenv("KGENV_ENVS", str(envs))
    monkeypatch.setenv("TINYJOB_RUNS", str(tmp_path / "runs.jsonl"))
    rt = make_envs(envs, KERNELS)
    return tmp_path, rt


def farm(tmp_path, rt, plan_path, jobs=1, **kw) -> Farm:
    return Farm(plans.load(plan_path), tmp_path / "out", tiny_engine(jobs), Store(tmp_path / "cache"), rt, **kw)


# -- plan -------------------------------------------------------------------------------------


def bad_plan(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(UserError, match=match) as e:
        plans.load(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_plan_problems_are_one_line_errors_naming_the_file(tmp_path):
    (tmp_path / "a.diff").write_text("x")
    fix = '[fixes.a]\ndiff = "a.diff"\nexpected = "built"\n'
    bad_plan(tmp_path, "kernels = [", "not valid TOML")
    bad_plan(tmp_path, 'kernels = ["k"]\n', "fixes")
    bad_plan(tmp_path, fix, "kernels must be a non-empty list")
    bad_plan(tmp_path, 'kernels = ["debian:"]\n' + fix, "is not an env name")
    bad_plan(tmp_path, 'kernels = ["fedora:40"]\n' + fix, "is not an env name")
    bad_plan(tmp_path, 'kernels = ["k", "k"]\n' + fix, "listed twice")
    bad_plan(tmp_path, 'kernels = ["k"]\nflavour = 1\n' + fix, "unknown key 'flavour'")
    bad_plan(tmp_path, 'kernels = ["k"]\n' + fix.replace("built", "maybe"), "expected must be one of")
    bad_plan(tmp_path, 'kernels = ["k"]\n' + fix.replace("a.diff", "nope.diff"), "nope.diff: no such file")
    bad_plan(tmp_path, 'kernels = ["k"]\n' + fix.replace("fixes.a", 'fixes."a/b"'), "fix name")
    bad_plan(tmp_path, 'kernels = ["k"]\n' + fix + "[options]\nboot_test = true\n", "check is required")
    bad_plan(tmp_path, 'kernels = ["k"]\n' + fix + "[options]\njobs = 0\n", "options.jobs")
    bad_plan(tmp_path, 'kernels = ["k"]\nfixtures = "nodir"\n', "no such directory")


def test_plan_reads_fixture_stems_and_directories(tmp_path):
    p = tmp_path / "plan.toml"
    p.write_text(
        f'kernels = ["debian:bookworm", "debian:6.1.0-57-amd64", "my-env"]\n'
        f'fixtures = "{ROOT / "fixtures" / "patches"}"\n[options]\nboot_test = true\nroot = "{ROOT}"\n'
    )
    pl = plans.load(p)
    by = {f.name: f for f in pl.fixes}
    assert by["cmdline"].expected == "built" and by["cmdline"].check.name == "cmdline.check"
    assert by["refuse-init"].expected == "refused" and by["refuse-init"].check is None
    assert len(by["cmdline"].diff_sha256) == 64 and pl.options.boot_test


# -- keys -------------------------------------------------------------------------------------


def test_job_key_changes_with_each_input_and_only_then(tmp_path):
    p = write_plan(tmp_path, ["k"], {"a": (OK_C, "built")})
    fix = plans.load(p).fixes[0]
    base = Job("k", "sha256:" + "1" * 64, "r", fix, False, "v1")
    same = Job("k", "sha256:" + "1" * 64, "other-release", fix, False, "v1")
    assert base.key == same.key  # the release is a label; the image ID is the input
    changed = [
        Job("k", "sha256:" + "2" * 64, "r", fix, False, "v1"),
        Job("k", base.image_id, "r", fix, True, "v1"),
        Job("k", base.image_id, "r", fix, False, "v2"),
        Job("k", base.image_id, "r", fix.__class__(**{**fix.__dict__, "diff_sha256": "0" * 64}), False, "v1"),
    ]
    assert len({base.key, *(j.key for j in changed)}) == 5
    assert kgenv_identity().startswith("0.") and kgenv_identity() == kgenv_identity()


# -- runs -------------------------------------------------------------------------------------


def test_matrix_cache_and_exit_codes(farm_dir):
    tmp, rt = farm_dir
    crash = "// crash\n"
    p = write_plan(tmp, KERNELS, {"ok": (OK_C, "built"), "bad": (BAD_C, "refused"), "boom": (crash, "built")})
    m = farm(tmp, rt, p, jobs=2).run()
    assert {(c.kernel, c.fix): c.outcome for c in m.cells} == {
        (k, f): o for k in KERNELS for f, o in (("ok", "built"), ("bad", "refused"), ("boom", "error"))
    }
    assert m.exit_code == 2 and len(runs(tmp / "runs.jsonl")) == 6
    boom = m.cell("tiny-k1", "boom")
    assert "no report.json; exit 2: tinyjob: crashing as asked" in boom.reason
    assert (tmp / "out" / boom.log).read_text().strip() == "tinyjob: crashing as asked"
    bad = m.cell("tiny-k2", "bad")
    assert bad.as_expected and "expected expression" in bad.reason and not bad.module

    ok = m.cell("tiny-k1", "ok")
    job_dir = tmp / "out" / ok.dir
    assert {f.name for f in job_dir.iterdir()} >= {
        "livepatch-ok.ko",
        "ok.c",
        "Kbuild",
        "report.json",
        "build.log",
        "provenance.intoto.json",
        "job.json",
        "attempt.json",
    }
    assert json.loads((job_dir / "job.json").read_text())["job"]["key"] == ok.key

    doc = json.loads((tmp / "out" / "matrix.json").read_text())
    assert set(doc) == {"farm", "kernels", "fixes", "jobs"}
    assert all(not isinstance(v, (dict, list)) for v in doc["farm"].values())
    assert all(
        not isinstance(v, (dict, list)) for sec in ("kernels", "fixes", "jobs") for r in doc[sec] for v in r.values()
    )  # two levels deep
    assert doc["farm"]["exit_code"] == 2 and doc["farm"]["count_error"] == 2
    assert matrix.load(tmp / "out" / "matrix.json") == m

    # Re-run: verdicts come from the cache, the errors are redone.
    m2 = farm(tmp, rt, p, jobs=2).run()
    assert len(runs(tmp / "runs.jsonl")) == 8
    assert {c.fix for c in m2.cells if c.cached} == {"ok", "bad"} and m2.cell("tiny-k2", "ok").cached
    assert [c.outcome for c in m2.cells] == [c.outcome for c in m.cells]

    # Fix the crashing job: only it runs, and now everything is as expected.
    (tmp / "boom.c").write_text(OK_C + "// was a crash\n")
    m3 = farm(tmp, rt, p).run()
    assert len(runs(tmp / "runs.jsonl")) == 10 and m3.exit_code == 0
    assert not any(c.cached for c in m3.cells if c.fix == "boom")


def test_unexpected_outcome_is_exit_1_and_no_cache_reruns(farm_dir):
    tmp, rt = farm_dir
    p = write_plan(tmp, KERNELS[:1], {"ok": (OK_C, "built"), "wrong": (OK_C + "int x = ;\n", "built")})
    m = farm(tmp, rt, p).run()
    assert m.exit_code == 1 and not m.cell("tiny-k1", "wrong").as_expected
    farm(tmp, rt, p, use_cache=False).run()
    assert len(runs(tmp / "runs.jsonl")) == 4


def test_failed_boot_proof_is_redone_and_passes_once_fixed(farm_dir):
    tmp, rt = farm_dir
    (tmp / "check.sh").write_text(f"test -e {tmp}/fixed\n")
    p = write_plan(tmp, KERNELS[:1], {"ok": (OK_C, "built")}, "boot_test = true")
    p.write_text(p.read_text().replace('expected = "built"', 'expected = "built"\ncheck = "check.sh"'))
    m = farm(tmp, rt, p).run()
    assert m.cells[0].outcome == "boot-failed" and m.exit_code == 1
    (tmp / "fixed").touch()
    m = farm(tmp, rt, p).run()
    assert m.cells[0].outcome == "built" and m.exit_code == 0 and len(runs(tmp / "runs.jsonl")) == 2


def test_parallelism_is_bounded(farm_dir):
    tmp, rt = farm_dir
    p = write_plan(tmp, KERNELS, {f"s{i}": (OK_C + "// sleep 0.6\n", "built") for i in range(3)})
    farm(tmp, rt, p, jobs=2).run()
    events = sorted(
        [(r["t"], 1) for r in runs(tmp / "runs.jsonl")] + [(r["t"], -1) for r in runs(tmp / "runs.jsonl", "end")]
    )
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 2 and len(events) == 12  # two at a time: never more, and not one after another


DRIVER = """
import signal
import sys
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background parent may have ignored it
sys.path.insert(0, {tests!r})
from farm_helpers import make_envs, tiny_engine
from kgenv.farm import plan
from kgenv.farm.run import Farm
from kgenv.farm.store import Store
from kgenv.progress import Progress
tmp = Path({tmp!r})
rt = make_envs(tmp / "envs", {kernels!r})
try:
    Farm(plan.load(tmp / "plan.toml"), tmp / "out", tiny_engine(2), Store(tmp / "cache"), rt, Progress()).run()
except KeyboardInterrupt:
    sys.exit(2)
"""


def test_ctrl_c_keeps_finished_jobs_and_leaves_nothing_half_written(farm_dir):
    tmp, rt = farm_dir
    fixes = {"fast": (OK_C, "built"), **{f"slow{i}": (OK_C + "// sleep 30\n", "built") for i in range(2)}}
    p = write_plan(tmp, KERNELS[:1], fixes)
    script = DRIVER.format(tests=str(ROOT / "tests"), tmp=str(tmp), kernels=KERNELS)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while len(runs(tmp / "runs.jsonl")) < 3 or not runs(tmp / "runs.jsonl", "end"):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)  # the fast job's end is committed; the slow ones are mid-run
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    m = matrix.load(tmp / "out" / "matrix.json")
    assert [(c.fix, c.outcome) for c in m.cells] == [("fast", "built"), ("slow0", "not-run"), ("slow1", "not-run")]
    assert m.farm["interrupted"] and m.exit_code == 2
    starts = runs(tmp / "runs.jsonl")
    for r in starts:  # every tiny job was stopped, none left running
        with pytest.raises(ProcessLookupError):
            os.kill(r["pid"], 0)
    store = tmp / "cache"
    assert list((store / "tmp").iterdir()) == [] and len(list((store / "results").iterdir())) == 1
    assert not [f for f in (tmp / "out").rglob("*") if f.name.startswith(".")]  # no temp leftovers
    # A re-run does only the unfinished jobs.
    (tmp / "slow0.c").write_text(OK_C)
    (tmp / "slow1.c").write_text(OK_C + "\n")
    m = farm(tmp, rt, p).run()
    assert m.exit_code == 0 and [c.cached for c in m.cells] == [True, False, False]
    assert len(runs(tmp / "runs.jsonl")) == 5


def test_provenance_names_module_env_source_config_and_diff(farm_dir):
    tmp, rt = farm_dir
    p = write_plan(tmp, KERNELS[:1], {"ok": (OK_C, "built")})
    m = farm(tmp, rt, p).run()
    c = m.cells[0]
    st = json.loads((tmp / "out" / c.provenance).read_text())
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    assert st["subject"] == [{"name": "livepatch-ok.ko", "digest": {"sha256": c.module_sha256}}]
    env = __import__("kgenv.manifest", fromlist=["load"]).load("tiny-k1")
    deps = {d["name"]: d["digest"]["sha256"] for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["env-image"] == env.image.id.removeprefix("sha256:")
    assert deps[env.kernel.source_package] == env.kernel.source_sha256
    assert deps["kernel-config"] == env.kernel.config_sha256
    assert deps["ok.c"] == plans.load(p).fixes[0].diff_sha256
    builder = st["predicate"]["runDetails"]["builder"]
    assert builder["version"]["kgenv"] == kgenv_identity() and "build" in builder["version"]["reproducer"]


def test_junit_suite_per_kernel_case_per_fix_failures_carry_the_reason(farm_dir):
    from junitparser import JUnitXml
    from junitparser.junitparser import Error, Failure

    tmp, rt = farm_dir
    p = write_plan(tmp, KERNELS, {"ok": (OK_C, "built"), "wrong": (BAD_C, "built"), "boom": ("// crash\n", "built")})
    m = farm(tmp, rt, p).run()
    xml = JUnitXml.fromfile(str(tmp / "out" / "matrix.junit.xml"))
    suites = {s.name: s for s in xml}
    assert set(suites) == set(KERNELS)
    for suite in suites.values():
        cases = {c.name: c for c in suite}
        assert set(cases) == {"ok", "wrong", "boom"} and suite.tests == 3
        assert suite.failures == 1 and suite.errors == 1
        assert cases["ok"].is_passed
        failure = next(r for r in cases["wrong"].result if isinstance(r, Failure))
        assert "expected built, got refused" in failure.message and "expected expression" in failure.message
        assert "error: expected expression" in failure.text  # the log's tail
        error = next(r for r in cases["boom"].result if isinstance(r, Error))
        assert "got error" in error.message and "tinyjob: crashing as asked" in error.text
    assert m.exit_code == 2


def test_html_matrix_links_each_report_and_renders_in_chromium(farm_dir):
    import re

    from browser import distinct_colours, png_pixels, screenshot

    tmp, rt = farm_dir
    p = write_plan(
        tmp,
        KERNELS,
        {
            "ok": (OK_C, "built"),
            "bad": (BAD_C, "refused"),
            "boom": ("// crash\n", "built"),
            "wrong": (BAD_C + "\n", "built"),
        },
    )
    m = farm(tmp, rt, p).run()
    page = (tmp / "out" / "matrix.html").read_text()
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained
    links = re.findall(r'<a href="([^"]+)"', page)
    assert len(links) == len(m.cells) and all((tmp / "out" / link).is_file() for link in links)
    assert sum(link.endswith("report.json") for link in links) == 6  # boom has only its log
    assert page.count('class="cell unexpected"') == 4
    png = screenshot(tmp / "out" / "matrix.html", tmp / "matrix.png", (1000, 500))
    assert distinct_colours(png) > 20
    pixels = set(png_pixels(png)[2])
    for rgb in ((0x1F, 0x88, 0x3D), (0x09, 0x69, 0xDA), (0x82, 0x07, 0x1E)):  # built, refused, error cells
        assert any(px[:3] == rgb for px in pixels), rgb


# -- CLI and the Buildbot master configuration -----------------------------------------------


def kgenv_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "kgenv", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=os.environ
    )


def test_cli_refuses_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "plan.toml"
    bad.write_text('kernels = ["k"]\n[fixes.a]\ndiff = "missing.diff"\nexpected = "built"\n')

    def refused(args, match):
        r = kgenv_cli(*args)
        assert r.returncode == 2 and match in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr

    refused(["farm", "run", bad], "missing.diff: no such file")
    refused(["farm", "run", tmp_path / "nope.toml"], "cannot read plan")
    (tmp_path / "a.diff").write_text("x")
    bad.write_text(bad.read_text().replace("missing.diff", "a.diff"))
    refused(["farm", "run", bad, "--engine", "buildbot"], "needs --master URL")
    refused(["farm", "run", bad, "--master", "http://127.0.0.1:1/"], "go with --engine buildbot")
    refused(["farm", "run", bad, "--sign-key", tmp_path / "a.diff"], "go together")
    assert not (tmp_path / "farm-plan").exists()


def test_buildbot_config_is_written_whole_and_passes_buildbot_checkconfig(tmp_path):
    from buildbot_cluster import tool

    md = tmp_path / "master"
    r = kgenv_cli("farm", "buildbot-config", "-o", md, "--worker", "w1", "--worker", "w2", "--www-port", 18123)
    assert r.returncode == 0, r.stderr
    assert "buildbot create-master" in r.stdout and "--master http://127.0.0.1:18123/" in r.stdout
    settings = json.loads((md / "kgenv-farm.json").read_text())
    assert set(settings["workers"]) == {"w1", "w2"} and all(len(p) >= 20 for p in settings["workers"].values())
    assert (md / "kgenv-farm.json").stat().st_mode & 0o077 == 0  # passwords: owner only
    assert all(p not in r.stdout for p in settings["workers"].values())
    text = (md / "master.cfg").read_text()
    assert 'c["collapseRequests"] = False' in text and "--image" in text
    ok = subprocess.run([tool("buildbot"), "checkconfig", str(md)], capture_output=True, text=True)
    assert ok.returncode == 0 and "Config file is good" in ok.stdout, ok.stdout + ok.stderr
    again = kgenv_cli("farm", "buildbot-config", "-o", md)
    assert again.returncode == 2 and "use --force" in again.stderr
    bad = kgenv_cli("farm", "buildbot-config", "-o", tmp_path / "m2", "--worker", "a b")
    assert bad.returncode == 2 and "workers" in bad.stderr and not (tmp_path / "m2" / "master.cfg").exists()


def test_buildbot_artefacts_stay_inside_and_logs_lose_the_environment_dump(tmp_path):
    import io
    import tarfile

    from kgenv.farm.buildbot.client import extract_artefacts, log_text

    def tar_with(*members):
        path = tmp_path / f"t{len(list(tmp_path.iterdir()))}.tar"
        with tarfile.open(path, "w") as tf:
            for info, data in members:
                tf.addfile(info, io.BytesIO(data) if data is not None else None)
        return path

    def member(name, data=b"x", kind=tarfile.REGTYPE, link=""):
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
        return info, data if kind == tarfile.REGTYPE else None

    good = tar_with(
        member("./report.json", b"{}"),
        member("./livepatch-a.ko", b"ELF"),
        member("./evil", kind=tarfile.SYMTYPE, link="/etc/passwd"),
    )
    assert extract_artefacts(good, tmp_path / "out") == ""
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["livepatch-a.ko", "report.json"]
    bad = tar_with(member("../escape", b"x"))
    assert "unreadable job artefact" in extract_artefacts(bad, tmp_path / "out2")
    assert not (tmp_path / "escape").exists() and not bad.exists()
    contents = {
        "logchunks": [
            {
                "content": "hkgenv build a.diff\nh environment:\nh  SECRET=1\noBUILT: a\n"
                "eWARN x\nhprogram finished with exit code 0\nhelapsedTime=1\n"
            }
        ]
    }
    assert log_text(contents) == "kgenv build a.diff\nBUILT: a\nWARN x\nprogram finished with exit code 0\n"
