"""Buildbot tier: a real master and two workers on loopback run farm jobs; the matrix equals the local one."""

import os
import signal
from pathlib import Path

import pytest
from buildbot_cluster import Cluster, port_open
from farm_helpers import BAD_C, OK_C, TINYJOB, tiny_engine, write_plan

from kgenv.build import report as build_report
from kgenv.farm import plan as plans
from kgenv.farm.buildbot.client import BuildbotEngine
from kgenv.farm.run import Farm
from kgenv.farm.store import Store
from kgenv.fsutil import sha256_file
from kgenv.progress import Progress

pytestmark = [pytest.mark.archive, pytest.mark.docker]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, envs_dir):
    """worker1 shares the test envs; worker2 starts with none and must import the env archive."""
    root = tmp_path_factory.mktemp("buildbot")
    (root / "worker2-envs").mkdir()
    c = Cluster(
        root, {"worker1": {"KGENV_ENVS": str(envs_dir)}, "worker2": {"KGENV_ENVS": str(root / "worker2-envs")}}, TINYJOB
    )
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory, env):
    d = tmp_path_factory.mktemp("plan")
    return write_plan(
        d,
        [env.name],
        {
            "ok": (OK_C, "built"),
            "ok-slow": (OK_C + "// sleep 3\n", "built"),
            "bad": (BAD_C, "refused"),
            "boom": ("// crash\n", "built"),
            "other": ("long other(long y) { return y * 2; }\n", "built"),
        },
    )


def run(plan_path, out, store, engine, rt):
    return Farm(plans.load(plan_path), out, engine, Store(store), rt, Progress()).run()


@pytest.fixture(scope="module")
def bb_matrix(cluster, plan_path, docker_rt, tmp_path_factory):
    d = tmp_path_factory.mktemp("bb-run")
    return d, run(
        plan_path,
        d / "out",
        d / "store",
        BuildbotEngine(cluster.url, cluster.envs_store, docker_rt, poll=0.3),
        docker_rt,
    )


def test_jobs_run_on_both_workers_and_artefacts_arrive(bb_matrix, cluster, env):
    d, m = bb_matrix
    outcome = {c.fix: c.outcome for c in m.cells}
    assert outcome == {"ok": "built", "ok-slow": "built", "bad": "refused", "boom": "error", "other": "built"}
    assert m.exit_code == 2 and {c.engine for c in m.cells} == {"buildbot"}
    assert {c.worker for c in m.cells} == {"worker1", "worker2"}
    for c in m.cells:
        if c.outcome == "built":
            module = d / "out" / c.dir / c.module
            assert sha256_file(module) == c.module_sha256
            report = build_report.load(d / "out" / c.report)
            assert report.env.image_id == env.image.id and "--image" in report.kgenv.reproducer
            assert (d / "out" / c.provenance).is_file()
    # The job's tarball went through the master's store.
    assert len(list((cluster.master / "kgenv-store" / "jobs").glob("*/*.tar"))) >= 5
    # worker2 had no env: it downloaded the export archive from the master and imported it.
    assert (cluster.root / "worker2-envs" / f"{env.name}.toml").is_file()
    assert (cluster.envs_store / f"{env.image.id.removeprefix('sha256:')}.tar").is_file()


def test_the_failure_and_its_log_reach_the_matrix(bb_matrix):
    d, m = bb_matrix
    boom = m.cell(m.kernels[0].env, "boom")
    assert not boom.as_expected and boom.exit_code == 2 and "exit code 2" in boom.reason
    log = (d / "out" / boom.log).read_text()
    assert "tinyjob: crashing as asked" in log and "farm_tinyjob.py build job/fix.diff" in log
    assert "PATH=" not in log  # Buildbot's environment dump stays out of the farm's logs
    bad = m.cell(m.kernels[0].env, "bad")
    assert bad.as_expected and "expected expression" in bad.reason


def test_same_matrix_as_the_local_engine_and_a_rerun_is_cached(bb_matrix, plan_path, docker_rt, cluster):
    d, m = bb_matrix
    local = run(plan_path, d / "local-out", d / "local-store", tiny_engine(2), docker_rt)
    assert [(c.kernel, c.fix, c.outcome, c.module_sha256 != "") for c in local.cells] == [
        (c.kernel, c.fix, c.outcome, c.module_sha256 != "") for c in m.cells
    ]
    again = run(plan_path, d / "out", d / "store", BuildbotEngine(cluster.url, None, docker_rt, poll=0.3), docker_rt)
    assert {c.fix for c in again.cells if c.cached} == {"ok", "ok-slow", "bad", "other"}
    assert again.cell(m.kernels[0].env, "boom").worker in ("worker1", "worker2")


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from kgenv.farm import plan
from kgenv.farm.buildbot.client import BuildbotEngine
from kgenv.farm.run import Farm
from kgenv.farm.store import Store
from kgenv.runtime.docker import runtime
d = Path({d!r})
rt = runtime()
try:
    Farm(plan.load(d / "plan.toml"), d / "out", BuildbotEngine({url!r}, None, rt, poll=0.3), Store(d / "store"), rt).run()
except KeyboardInterrupt:
    sys.exit(2)
"""


def test_ctrl_c_stops_running_builds_and_cancels_queued_ones(cluster, env, tmp_path):
    import subprocess
    import sys
    import time

    from kgenv.farm import matrix

    write_plan(tmp_path, [env.name], {f"slow{i}": (OK_C + f"// sleep 60\n// {i}\n", "built") for i in range(3)})
    script = DRIVER.format(tests=str(Path(__file__).parent), d=str(tmp_path), url=cluster.url)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(cluster.api("builds?complete=false")["builds"]) < 2:  # both workers busy, one request queued
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    m = matrix.load(tmp_path / "out" / "matrix.json")
    assert [c.outcome for c in m.cells] == ["not-run"] * 3 and m.farm["interrupted"]
    deadline = time.monotonic() + 30
    while (
        cluster.api("builds?complete=false")["builds"] or cluster.api("buildrequests?complete=false")["buildrequests"]
    ):
        assert time.monotonic() < deadline, "builds or requests left behind"
        time.sleep(0.5)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_clean_shutdown(cluster):
    pids = cluster.pids()
    assert len(pids) == 3
    cluster.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any(port_open(p) for p in cluster.ports.values())
    assert cluster.pids() == []
