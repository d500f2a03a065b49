"""Helpers for the farm's own tests: envs whose images the engine is said to hold, plans of tiny C jobs."""

import hashlib
import json
import re
import sys
from pathlib import Path

from kgenv.farm.engine import LocalEngine

ROOT = Path(__file__).resolve().parent.parent
TINYJOB = [sys.executable, str(ROOT / "tests" / "farm_tinyjob.py")]
TEMPLATE = ROOT / "envs" / "debian-6.1.0-57-amd64.toml"


class Images:
    """The one question the farm asks the container engine when every env exists: is this image here?"""

    def __init__(self, ids: list[str]) -> None:
        self.ids = set(ids)

    def image_id(self, ref: str) -> str | None:  # Runtime.image_id
        return ref if ref in self.ids else None


def make_envs(envs_dir: Path, names: list[str]) -> Images:
    """Manifests copied from the recorded env, renamed, each with an image ID of its own."""
    text = TEMPLATE.read_text()
    ids = []
    for n in names:
        image = "sha256:" + hashlib.sha256(n.encode()).hexdigest()
        t = re.sub(r'(?m)^name = ".*"$', f'name = "{n}"', text, count=1)
        t = re.sub(r'(?m)^id = "sha256:[0-9a-f]+"$', f'id = "{image}"', t, count=1)
        (envs_dir / f"{n}.toml").write_text(t)
        ids.append(image)
    return Images(ids)


OK_C = "int fixed(int x) { return x + 1; }\n"
BAD_C = "int broken(int x) { return x + ; }\n"


def write_plan(d: Path, kernels: list[str], fixes: dict[str, tuple[str, str]], options: str = "") -> Path:
    """fixes: name -> (C source, expected outcome)."""
    lines = [f"kernels = {json.dumps(kernels)}", ""]
    for name, (src, expected) in fixes.items():
        (d / f"{name}.c").write_text(src)
        lines += [f"[fixes.{name}]", f'diff = "{name}.c"', f'expected = "{expected}"', ""]
    if options:
        lines += ["[options]", options]
    path = d / "plan.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_engine(jobs: int = 1) -> LocalEngine:
    return LocalEngine(jobs, command=TINYJOB, cores=1)


def runs(path: Path, event: str = "start") -> list[dict]:
    """The tiny job's own records of its runs (start or end events)."""
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]
