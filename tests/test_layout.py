"""The package's shape: imports only run down the pipeline's layers; no private name crosses modules."""

import ast
from pathlib import Path

import kgenv

PKG = Path(kgenv.__file__).resolve().parent
# Lowest first. A module may import its own package and anything in an earlier layer, never a later
# layer nor another package of its own layer.
LAYERS = [
    {"__init__", "errors"},
    {"fsutil", "progress"},  # fsutil's one-line errors come from the error tree
    {"manifest"},
    {"elf", "distro", "runtime"},
    {"image"},
    {"env"},
    {"verify"},
    {"boot"},
    {"build"},
    {"report"},
    {"audit", "farm"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(module: str) -> str:
    """The top-level package or module a dotted kgenv name belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"] if rel.name == "__init__" else list(rel.parts)
        out[".".join(["kgenv", *parts])] = f
    return out


def _imports(f: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every kgenv import in f, function-local ones included."""
    found = []
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{f}:{node.lineno}: relative import (use kgenv.…)"
            if node.module and node.module.split(".")[0] == "kgenv":
                found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "kgenv"]
    return found


def test_every_module_has_a_layer():
    units = {_unit(m) for m in _modules()}
    assert units and units <= set(RANK), f"no layer for {sorted(units - set(RANK))}"


def test_imports_never_run_back_up():
    modules = _modules()
    bad = []
    for module, f in modules.items():
        if f.name == "master_cfg.py":  # a Buildbot config file, executed by buildbot, not imported
            continue
        src = _unit(module)
        for target, names, line in _imports(f):
            # `from kgenv import manifest` imports a module; `from kgenv import __version__` the package
            dests = (
                [_unit(f"kgenv.{n}") if f"kgenv.{n}" in modules else "__init__" for n in names]
                if target == "kgenv"
                else [_unit(target)]
            )
            for dest in dests:
                if dest != src and RANK[dest] >= RANK[src] and dest != "__init__":
                    bad.append(f"{f.relative_to(PKG)}:{line}: {src} imports {target} ({dest})")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_modules():
    roots = [PKG, PKG.parent / "tests", PKG.parent / "bench"]
    bad = []
    for root in roots:
        for f in sorted(root.rglob("*.py")):
            for target, names, line in _imports(f):
                bad += [f"{f}:{line}: {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def test_few_modules_directly_in_the_package():
    loose = sorted(p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert 0 < len(loose) <= 6, loose
