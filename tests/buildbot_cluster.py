"""A real Buildbot master and workers on loopback (PyPI's buildbot, buildbot-worker, buildbot-www).

Used by the Buildbot tier and bench/bench_farm.py: writes the config with `kgenv farm buildbot-config`,
starts everything as daemons, waits until the workers are attached, and stops them cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def tool(name: str) -> str:
    """A console script of this interpreter's install; a missing one fails loudly."""
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name}: not installed (pip install buildbot buildbot-worker buildbot-www)")
    return found


def _run(*argv, env=None, timeout=120) -> str:
    r = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if r.returncode:
        raise RuntimeError(f"{' '.join(map(str, argv))}: exit {r.returncode}: {r.stdout[-800:]}{r.stderr[-800:]}")
    return r.stdout


@dataclass
class Cluster:
    root: Path
    workers: dict[str, dict]  # worker name -> extra environment (e.g. its own KGENV_ENVS)
    build_command: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def master(self) -> Path:
        return self.root / "master"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['www']}/"

    @property
    def envs_store(self) -> Path:
        return self.master / "kgenv-store" / "envs"

    def start(self) -> Cluster:
        self.ports = {"www": free_port(), "pb": free_port(), "artifacts": free_port()}
        kgenv = [sys.executable, "-m", "kgenv"]
        args = [
            "farm",
            "buildbot-config",
            "-o",
            self.master,
            "--www-port",
            self.ports["www"],
            "--pb-port",
            self.ports["pb"],
            "--artifacts-port",
            self.ports["artifacts"],
            "--kgenv-command",
            " ".join(kgenv),
            "--cores",
            "1",
        ]
        for w in self.workers:
            args += ["--worker", w]
        if self.build_command:
            args += ["--build-command", " ".join(self.build_command)]
        _run(*kgenv, *args)
        _run(tool("buildbot"), "create-master", self.master)
        _run(tool("buildbot"), "start", self.master)
        passwords = json.loads((self.master / "kgenv-farm.json").read_text())["workers"]
        for w, env in self.workers.items():
            wdir = self.root / w
            _run(
                tool("buildbot-worker"),
                "create-worker",
                "--umask=0o022",
                wdir,
                f"127.0.0.1:{self.ports['pb']}",
                w,
                passwords[w],
            )
            _run(tool("buildbot-worker"), "start", wdir, env=env)
        self.wait_attached()
        return self

    def api(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + "api/v2/" + path, timeout=30) as r:
            return json.loads(r.read())

    def wait_attached(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            attached = {w["name"] for w in self.api("workers")["workers"] if w["connected_to"]}
            if attached == set(self.workers):
                return
            time.sleep(0.5)
        raise RuntimeError(f"workers not attached after {timeout}s: {attached}")

    def pids(self) -> list[int]:
        files = [self.master / "twistd.pid"] + [self.root / w / "twistd.pid" for w in self.workers]
        return [int(f.read_text()) for f in files if f.exists()]

    def stop(self) -> None:
        """Workers first, then the master; each must be gone and its ports closed."""
        for w in self.workers:
            if (self.root / w / "twistd.pid").exists():
                _run(tool("buildbot-worker"), "stop", self.root / w)
        if (self.master / "twistd.pid").exists():
            _run(tool("buildbot"), "stop", self.master)
