"""Real farms: `kgenv build` jobs on the recorded env — local with boot proofs, and on a loopback Buildbot."""

import json

import pytest
from buildbot_cluster import Cluster

from kgenv.build import report as build_report
from kgenv.farm import plan as plans
from kgenv.farm.buildbot.client import BuildbotEngine
from kgenv.farm.engine import LocalEngine
from kgenv.farm.run import Farm
from kgenv.farm.store import Store
from kgenv.fsutil import sha256_file
from kgenv.progress import Progress

pytestmark = [pytest.mark.archive, pytest.mark.docker]
FIXTURES = __import__("pathlib").Path(__file__).resolve().parent.parent / "fixtures" / "patches"


def plan_file(d, env, fixes, boot=False):
    """Fixture fixes, plus `broken`: the cmdline fix with a context line the tree does not have."""
    (d / "broken.diff").write_text(
        (FIXTURES / "cmdline.diff")
        .read_text()
        .replace("seq_puts(m, saved_command_line);", "seq_puts(m, no_such_context_line);")
    )
    lines = [f'kernels = ["{env.name}"]', ""]
    for f in fixes:
        lines += [f"[fixes.{f}]", f'fixture = "{FIXTURES / f}"', ""]
    lines += [
        "[fixes.broken]",
        'diff = "broken.diff"',
        'expected = "built"',
        f'check = "{FIXTURES / "cmdline.check"}"',
        "",
        "[options]",
        f"boot_test = {'true' if boot else 'false'}",
        f'root = "{FIXTURES}"',  # the fixtures lie outside the plan's tmp dir
    ]
    (d / "plan.toml").write_text("\n".join(lines) + "\n")
    return plans.load(d / "plan.toml")


def check_real(m, out, env):
    c = {c.fix: c for c in m.cells}
    assert c["refuse-data"].outcome == "refused" and "data" in c["refuse-data"].reason
    broken = c["broken"]
    assert broken.outcome == "error" and not broken.as_expected and "does not apply" in broken.reason
    assert "hunk 1 of fs/proc/cmdline.c" in (out / broken.log).read_text()
    for cell in c.values():
        if cell.outcome != "built":
            continue
        report = build_report.load(out / cell.report)
        assert report.env.image_id == env.image.id
        assert sha256_file(out / cell.dir / cell.module) == cell.module_sha256 == report.result.module_sha256
        st = json.loads((out / cell.provenance).read_text())
        assert st["subject"][0]["digest"]["sha256"] == cell.module_sha256
        assert st["predicate"]["runDetails"]["builder"]["version"]["reproducer"] == report.kgenv.reproducer
    assert m.exit_code == 2


def test_local_farm_builds_boots_refuses_and_reruns_from_the_cache(env, tmp_path, docker_rt):
    p = plan_file(tmp_path, env, ["cmdline", "refuse-data"], boot=True)
    farm = Farm(p, tmp_path / "out", LocalEngine(2), Store(tmp_path / "store"), docker_rt, Progress())
    m = farm.run()
    check_real(m, tmp_path / "out", env)
    cmdline = m.cell(env.name, "cmdline")
    assert cmdline.outcome == "built" and cmdline.as_expected
    boot = build_report.load(tmp_path / "out" / cmdline.report).boot
    assert boot is not None and boot.result == "pass"
    again = Farm(p, tmp_path / "out", LocalEngine(2), Store(tmp_path / "store"), docker_rt).run()
    assert [c.fix for c in again.cells if c.cached] == ["cmdline", "refuse-data"]
    assert [(c.fix, c.outcome) for c in again.cells] == [(c.fix, c.outcome) for c in m.cells]


def test_buildbot_farm_of_real_builds(env, envs_dir, tmp_path, docker_rt):
    """A master and two workers run four real jobs (one must fail); artefacts and the failure reach the matrix."""
    c = Cluster(tmp_path / "bb", {"worker1": {"KGENV_ENVS": str(envs_dir)}, "worker2": {"KGENV_ENVS": str(envs_dir)}})
    (tmp_path / "bb").mkdir()
    try:
        c.start()
        p = plan_file(tmp_path, env, ["cmdline", "two-files", "refuse-data"])
        m = Farm(
            p,
            tmp_path / "out",
            BuildbotEngine(c.url, c.envs_store, docker_rt),
            Store(tmp_path / "store"),
            docker_rt,
            Progress(),
        ).run()
    finally:
        c.stop()
    check_real(m, tmp_path / "out", env)
    assert {x.worker for x in m.cells} == {"worker1", "worker2"}
    assert {x.fix: x.outcome for x in m.cells} == {
        "cmdline": "built",
        "two-files": "built",
        "refuse-data": "refused",
        "broken": "error",
    }
    assert c.pids() == []
