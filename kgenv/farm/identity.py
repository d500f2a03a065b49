"""Which code a cached farm result depends on: the modules `kgenv build` imports, and kernel/."""

import ast
import hashlib
import re
from functools import lru_cache
from pathlib import Path

from kgenv import __version__

# Bumped when the farm itself changes what a job produces (its own code is not in the digest).
FARM_SCHEMA = 1
# A job runs `python3 -m kgenv build`: the code it can reach starts at its command; the entry
# point and the CLI's error boundary (which turns outcomes into exit codes) run too.
BUILD_ENTRY = "kgenv.cli.build"
ENTRY_FILES = ("__main__.py", "cli/__init__.py")
PKG = Path(__file__).resolve().parent.parent
RUN_AS_MODULE = re.compile(r"-m (kgenv(?:\.\w+)+)")


def module_file(name: str, pkg: Path = PKG) -> Path | None:
    """The source file of kgenv module `name` (a package's __init__.py), or None."""
    parts = name.split(".")[1:]
    candidates = (
        [pkg / "__init__.py"]
        if not parts
        else [pkg.joinpath(*parts[:-1], parts[-1] + ".py"), pkg.joinpath(*parts, "__init__.py")]
    )
    for f in candidates:
        if f.is_file():
            return f
    return None


def _imports(f: Path) -> set[str]:
    """kgenv modules a file imports anywhere (function-local imports included) or runs as
    `python3 -m kgenv....` (cfacts runs that way inside the env container), and their packages."""
    text = f.read_text()
    out = set(RUN_AS_MODULE.findall(text))
    for node in ast.walk(ast.parse(text, str(f))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kgenv"):
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("kgenv")}
    # importing a.b.c runs a/__init__ and a/b/__init__ too
    return out | {".".join(n.split(".")[:i]) for n in out for i in range(1, n.count(".") + 1)}


def build_closure(entry: str = BUILD_ENTRY, pkg: Path = PKG) -> list[Path]:
    """Every kgenv source file reachable from `entry` by imports, sorted."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        f = module_file(todo.pop(), pkg)
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(_imports(f))
    return sorted(seen)


@lru_cache(maxsize=1)
def kgenv_identity() -> str:
    """The kgenv version plus a digest of the code and kernel/ templates a build runs: a checkout
    under development never reuses a result made by other code, while changes to code a build
    never reaches (the farm's scheduling, audit, reports) keep cached results."""
    h = hashlib.sha256(f"farm-schema {FARM_SCHEMA}\0".encode())
    kernel = PKG.parent / "kernel"
    templates = sorted(p for p in kernel.rglob("*") if p.is_file()) if kernel.is_dir() else []
    for f in sorted({*build_closure(), *(PKG / e for e in ENTRY_FILES)}) + templates:
        h.update(str(f.relative_to(PKG.parent)).encode() + b"\0" + f.read_bytes() + b"\0")
    return f"{__version__}+{h.hexdigest()[:12]}"
