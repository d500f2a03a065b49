"""Where jobs run: the Engine contract and the local back-end (bounded parallel processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kgenv import manifest
from kgenv.farm.job import LOG, Job
from kgenv.farm.store import Attempt
from kgenv.progress import QUIET, Progress

# How long an interrupted kgenv build gets to remove its containers before it is killed.
STOP_GRACE = 30.0


@dataclass(frozen=True)
class Task:
    """A job to run; the engine leaves kgenv build's OUTDIR in work/out and its output in work/build.log."""

    job: Job
    work: Path

    @property
    def out(self) -> Path:
        return self.work / "out"

    @property
    def log(self) -> Path:
        return self.work / LOG


Finished = Callable[[Task, Attempt], None]


class Engine:
    """Runs tasks and calls finished(task, attempt) in the caller's thread as each one ends.

    On KeyboardInterrupt an engine stops what it started (finished tasks are already
    reported) and re-raises. A Kubernetes back-end maps one task to one Job: see docs/farm.md.
    """

    name = "base"

    def execute(self, tasks: list[Task], finished: Finished, progress: Progress = QUIET) -> None:
        raise NotImplementedError


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def kgenv_command() -> list[str]:
    """This kgenv, run by this interpreter (so a farm never picks up another install)."""
    return [sys.executable, "-m", "kgenv"]


class LocalEngine(Engine):
    """Up to `jobs` kgenv builds at once on this machine, each in its own process group."""

    name = "local"

    def __init__(self, jobs: int = 1, command: list[str] | None = None, cores: int | None = None):
        self.jobs = max(1, jobs)
        self.command = command or kgenv_command()
        self.cores = cores or max(1, (os.cpu_count() or 1) // self.jobs)

    def argv(self, task: Task) -> list[str]:
        fix = task.job.fix
        return self.command + task.job.build_args(
            str(fix.diff), str(fix.check) if fix.check else None, str(task.out), self.cores
        )

    def execute(self, tasks, finished, progress=QUIET):
        pending = deque(tasks)
        running: dict[int, tuple[Task, subprocess.Popen, float]] = {}
        free = list(range(self.jobs))
        try:
            while pending or running:
                while pending and free:
                    slot = free.pop(0)
                    task = pending.popleft()
                    progress.step(f"start {task.job.id} on local-{slot}")
                    running[slot] = (task, self._start(task), time.monotonic())
                for slot, (task, proc, t0) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[slot]
                    free.append(slot)
                    finished(
                        task,
                        Attempt(
                            proc.returncode, f"local-{slot}", self.name, round(time.monotonic() - t0, 3), now_utc()
                        ),
                    )
                if running:
                    progress.tick("running: " + ", ".join(t.job.id for t, _, _ in running.values()))
                    time.sleep(0.1)
        finally:
            if running:
                _stop([proc for _, proc, _ in running.values()])

    def _start(self, task: Task) -> subprocess.Popen:
        task.work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CI": "true", "KGENV_ENVS": str(manifest.envs_dir().resolve())}
        with open(task.log, "wb") as log:
            # Own session: a terminal's Ctrl-C reaches the farm, which then stops each build in order.
            return subprocess.Popen(
                self.argv(task),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGINT each build's process group (kgenv removes its containers on it), then SIGKILL stragglers."""
    for p in procs:
        _signal(p, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(p, signal.SIGKILL)
            p.wait()


def _signal(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
