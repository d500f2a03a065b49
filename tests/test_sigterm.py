"""SIGTERM (farms, CI, service managers) stops kgenv like Ctrl-C: cleanups run, containers go, exit 2."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kgenv.cli import cli

REPO = Path(__file__).resolve().parent.parent

# a command that waits in a try/finally, as every stage's work-dir cleanup does
SLEEPER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from kgenv.cli import cli

    @cli.command("sleep-test")
    def sleep_test():
        try:
            print("ready", flush=True)
            time.sleep(60)
        finally:
            Path(sys.argv[1]).write_text("cleaned")

    sys.argv[1:] = [sys.argv[1]]
    cli.main(["sleep-test"], prog_name="kgenv")
    """
)


@pytest.mark.parametrize(
    ("sig", "line"), [(signal.SIGTERM, "kgenv: terminated (SIGTERM)"), (signal.SIGINT, "kgenv: interrupted")]
)
def test_a_signal_runs_the_cleanups_and_exits_2_with_one_line(tmp_path, sig, line):
    marker = tmp_path / "marker"
    p = subprocess.Popen(
        [sys.executable, "-c", SLEEPER, str(marker)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert p.stdout.readline() == "ready\n"
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert err.strip().splitlines() == [line]
    assert marker.read_text() == "cleaned"


def test_main_puts_the_signal_handlers_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert CliRunner().invoke(cli, ["--version"]).exit_code == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.docker
def test_sigterm_mid_build_leaves_no_container_and_no_work_dir(env, tmp_path):
    import docker

    c = docker.from_env()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = subprocess.Popen(
        [sys.executable, "-m", "kgenv", "build", str(REPO / "fixtures/patches/cmdline.diff"), "--env", env.name]
        + ["-o", str(tmp_path / "out")],
        env={**os.environ, "TMPDIR": str(tmp), "CI": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    mine = {"label": f"kgenv.pid={p.pid}"}
    try:
        deadline = time.monotonic() + 180
        while not c.containers.list(filters=mine):  # a stage's container is running: mid-build
            assert p.poll() is None and time.monotonic() < deadline, "no container of the build appeared"
            time.sleep(0.2)
        assert list(tmp.glob("kgenv-build-*"))
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 2, err
    assert err.strip().splitlines()[-1] == "kgenv: terminated (SIGTERM)"
    assert c.containers.list(all=True, filters=mine) == []
    assert list(tmp.iterdir()) == []
    assert not (tmp_path / "out" / "livepatch-cmdline.ko").exists()


def test_an_interrupted_host_run_stops_every_process_it_started(tmp_path):
    # kgenv audit --toolchain host runs make on this machine: kgenv stopping must stop make's children too
    import threading

    from kgenv.runtime.host import HostRuntime
    from tests.test_runtime_host import fake_env

    tree = tmp_path / "tree"
    (tree / "obj").mkdir(parents=True)
    pidfile = tmp_path / "pid"
    m = fake_env(tree)
    rt = HostRuntime(m, check=False)

    class Stop(Exception):
        pass

    class Progress:
        def tick(self, line):
            if line == "started":
                raise Stop  # as the SIGTERM handler raises in the main thread, mid-stream

    script = f"(sleep 300 & echo $! > {pidfile}; wait) & sleep 0.2; echo started; wait"
    with pytest.raises(Stop):
        rt.run(m.image.id, ["bash", "-c", script], workdir=str(tree), progress=Progress())
    grandchild = int(pidfile.read_text())
    deadline = threading.Event()
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        deadline.wait(0.1)
    else:
        pytest.fail(f"sleep {grandchild} outlived the interrupted run")
