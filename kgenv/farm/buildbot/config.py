"""`kgenv farm buildbot-config`: a master directory's master.cfg, its settings and its artefact store."""

from __future__ import annotations

import json
import os
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from kgenv.errors import UserError
from kgenv.fsutil import write_atomic
from kgenv.manifest import NAME_RE

TEMPLATE = Path(__file__).with_name("master_cfg.py")
SETTINGS = "kgenv-farm.json"


@dataclass(frozen=True)
class MasterSettings:
    workers: tuple[str, ...] = ("worker1", "worker2")
    bind: str = "127.0.0.1"
    www_port: int = 8010
    pb_port: int = 9989
    artifacts_port: int = 8011
    kgenv: tuple[str, ...] = ("kgenv",)  # how workers run kgenv (worker-env, envs import)
    build: tuple[str, ...] = ()  # how workers run kgenv build; default: the same as kgenv
    cores: int = 2  # kgenv build -j on a worker
    title: str = "kgenv farm"
    passwords: dict = field(default_factory=dict)


def write(masterdir: Path, s: MasterSettings, force: bool = False) -> dict:
    """master.cfg + kgenv-farm.json (worker passwords, mode 0600) + store/{envs,jobs}; returns the settings."""
    masterdir = Path(masterdir).resolve()
    cfg = masterdir / "master.cfg"
    if cfg.exists() and not force:
        raise UserError(f"{cfg}: exists; use --force to replace it")
    bad = [w for w in s.workers if not NAME_RE.match(w)]
    if bad or not s.workers or len(set(s.workers)) != len(s.workers):
        raise UserError(f"workers: give distinct names of [A-Za-z0-9._-] ({', '.join(bad) or 'none given'})")
    store = masterdir / "kgenv-store"
    for d in (store / "envs", store / "jobs"):
        d.mkdir(parents=True, exist_ok=True)
    host = s.bind if s.bind not in ("0.0.0.0", "::") else "127.0.0.1"
    data = {
        "title": s.title,
        "bind": s.bind,
        "www_port": s.www_port,
        "pb_port": s.pb_port,
        "artifacts_port": s.artifacts_port,
        "www_url": f"http://{host}:{s.www_port}/",
        "artifacts_url": f"http://{host}:{s.artifacts_port}/",
        "store": str(store),
        "kgenv": list(s.kgenv),
        "build": list(s.build or s.kgenv),
        "cores": s.cores,
        "workers": {w: s.passwords.get(w) or secrets.token_urlsafe(18) for w in s.workers},
    }
    write_atomic(masterdir / SETTINGS, json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.chmod(masterdir / SETTINGS, 0o600)
    write_atomic(cfg, TEMPLATE.read_text())
    return data


def next_steps(masterdir: Path, data: dict) -> str:
    """The commands that bring the master and its workers up (printed, never run for the user)."""
    m = shlex.quote(str(masterdir))
    lines = [f"buildbot create-master {m}   # once: buildbot.tac and the database", f"buildbot start {m}"]
    for w in sorted(data["workers"]):
        lines.append(
            f"buildbot-worker create-worker WORKDIR/{w} {data['bind']}:{data['pb_port']} {w} "
            f"$(jq -r '.workers[\"{w}\"]' {m}/{SETTINGS}) && buildbot-worker start WORKDIR/{w}"
        )
    lines.append(
        f"kgenv farm run PLAN.toml --engine buildbot --master {data['www_url']} "
        f"--master-envs {shlex.quote(data['store'])}/envs"
    )
    return "\n".join(lines)
