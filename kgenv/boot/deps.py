"""Which shipped modules the guest loads before a target module, in order, as modprobe would.

The guest has no modprobe (and Debian ships no modules.dep: depmod runs on install), so the host
reads the shipped modules' own .modinfo: `depends=` (needed; symbols) and `softdep=pre:` (names or
aliases modprobe loads first; libcrc32c's `pre: crc32c` is what makes its init find the crc32c
hash). A softdep is optional by definition: an unresolvable one is a note, and a module only a
softdep asks for may fail to load in the guest (crc32c-intel needs SSE4.2, TCG's CPU lacks it).
`softdep=post:` modules are loaded after, so nothing before the target needs them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from kgenv.boot.module import modinfo_entries
from kgenv.fsutil import cache_dir, write_atomic

INDEX_FORMAT = 1
_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class LoadPlan:
    """The modules to insmod before the patch, in order; `optional` ones only a softdep asks for."""

    paths: tuple[Path, ...]
    optional: frozenset[Path]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class ModuleTree:
    """One kernel's modules: <root>/modules.order lists the shipped .ko files; `key` names the
    kernel (its build-id) for the alias index cache, "" for none."""

    root: Path
    shipped: dict[str, Path]
    key: str = ""


def normalize(name: str) -> str:
    """A module name or alias as modprobe compares them: '-' is '_' outside [...] classes."""
    return re.sub(r"\[[^\]]*\]|-", lambda mt: "_" if mt.group() == "-" else mt.group(), name)


def depends(info: list[tuple[str, str]]) -> list[str]:
    """The modules a module's `depends=` names: needed first for its symbols."""
    return [normalize(d) for k, v in info if k == "depends" for d in v.split(",") if d]


def softdeps_pre(info: list[tuple[str, str]]) -> list[str]:
    """The words of the `pre:` parts of every `softdep=` entry, read as modprobe reads them: `pre:`
    and `post:` switch the list and a word before either belongs to none (cifs's bare
    `softdep=ecb` is ignored by modprobe too)."""
    out = []
    for key, value in info:
        if key != "softdep":
            continue
        mode = ""
        for word in value.split():
            if word in ("pre:", "post:"):
                mode = word
            elif mode == "pre:":
                out.append(word)
    return out


class Aliases:
    """Which modules an alias names: exact ones by lookup, wildcard ones (`pci:v*d*`) by fnmatch."""

    def __init__(self, by_module: dict[str, list[str]]) -> None:
        self.exact: dict[str, list[str]] = {}
        self.wild: list[tuple[str, str]] = []
        for module, aliases in by_module.items():
            for alias in map(normalize, aliases):
                if _WILDCARD.search(alias):
                    self.wild.append((alias, module))
                else:
                    self.exact.setdefault(alias, []).append(module)

    def match(self, name: str) -> list[str]:
        found = self.exact.get(name, []) + [mod for pat, mod in self.wild if fnmatchcase(name, pat)]
        return list(dict.fromkeys(found))


@dataclass(frozen=True)
class AliasIndex:
    """Aliases of the shipped modules, and the built-in modules' names and aliases."""

    shipped: Aliases
    builtin: Aliases


def builtin_aliases(root: Path) -> dict[str, list[str]]:
    """Built-in module -> its name and aliases, from modules.builtin(.modinfo); none when absent."""
    out: dict[str, list[str]] = {}
    listing = root / "modules.builtin"
    for line in listing.read_text().split() if listing.is_file() else ():
        name = normalize(Path(line).name.removesuffix(".ko"))
        out.setdefault(name, []).append(name)
    info = root / "modules.builtin.modinfo"
    for entry in info.read_bytes().split(b"\0") if info.is_file() else ():
        module, dot, rest = entry.decode("utf-8", "replace").partition(".")
        key, eq, value = rest.partition("=")
        if dot and eq and key == "alias":
            out.setdefault(normalize(module), []).append(value)
    return out


def _index_path(tree: ModuleTree) -> Path | None:
    return cache_dir() / "modules" / f"modindex-{tree.key}.json" if re.fullmatch(r"[0-9a-f]{8,}", tree.key) else None


def _cached_index(path: Path | None, tree: ModuleTree) -> dict | None:
    """The cached alias lists when they are of this format and this module set, else None."""
    try:
        data = json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        return None
    shipped, builtin = data.get("shipped"), data.get("builtin")
    if not (_alias_lists(shipped) and _alias_lists(builtin)) or set(shipped or ()) != set(tree.shipped):
        return None
    return data


def _alias_lists(value: object) -> bool:
    """Is this a module -> [alias, ...] map (what a corrupt cache file is not)?"""
    return isinstance(value, dict) and all(
        isinstance(v, list) and all(isinstance(a, str) for a in v) for v in value.values()
    )


def alias_index(tree: ModuleTree) -> AliasIndex:
    """The alias index of a kernel's modules: every shipped .ko's `alias=` entries (about 2 s for
    Debian's 4,000 modules), scanned once per kernel and kept in the cache under its build-id."""
    path = _index_path(tree)
    data = _cached_index(path, tree)
    if data is None:
        data = {
            "format": INDEX_FORMAT,
            "shipped": {n: [v for k, v in modinfo_entries(ko) if k == "alias"] for n, ko in tree.shipped.items()},
            "builtin": builtin_aliases(tree.root),
        }
        if path is not None:
            try:
                write_atomic(path, json.dumps(data, sort_keys=True))
            except OSError:
                pass  # a read-only cache only costs the next run a scan
    return AliasIndex(Aliases(data["shipped"]), Aliases(data["builtin"]))


class _Planner:
    """Depth first over `depends=` and `softdep=pre:` edges, each module placed once after what it
    needs; a cycle ends at a module already being placed."""

    def __init__(self, tree: ModuleTree) -> None:
        self.tree = tree
        self.info: dict[str, list[tuple[str, str]]] = {}
        self.index: AliasIndex | None = None
        self.order: list[str] = []
        self.seen: set[str] = set()
        self.notes: list[str] = []

    def modinfo(self, name: str) -> list[tuple[str, str]]:
        if name not in self.info:
            self.info[name] = modinfo_entries(self.tree.shipped[name])
        return self.info[name]

    def visit(self, name: str) -> None:
        if name in self.seen or name not in self.tree.shipped:  # placed, or built in
            return
        self.seen.add(name)
        info = self.modinfo(name)
        for dep in depends(info):
            self.visit(dep)
        for word in softdeps_pre(info):
            for provider in self.providers(name, word):
                self.visit(provider)
        self.order.append(name)

    def providers(self, owner: str, word: str) -> list[str]:
        """The shipped modules a softdep word names, in modprobe's order of lookups: a module
        name, then every module with a matching alias; a built-in one needs nothing."""
        name = normalize(word)
        if name in self.tree.shipped:
            return [name]
        if self.index is None:
            self.index = alias_index(self.tree)
        found = self.index.shipped.match(name)
        if not found and not self.index.builtin.match(name):
            self.notes.append(f"{owner}: softdep {word} is no shipped or built-in module; loaded without it")
        return found

    def needed(self, roots: Iterable[str]) -> set[str]:
        """The modules reachable through `depends=` alone: a failure to load them is fatal."""
        out: set[str] = set()
        todo = [r for r in roots if r in self.tree.shipped]
        while todo:
            name = todo.pop()
            if name not in out:
                out.add(name)
                todo += [d for d in depends(self.modinfo(name)) if d in self.tree.shipped]
        return out


def plan(tree: ModuleTree, targets: Iterable[str]) -> LoadPlan:
    """What the guest insmods before the patch for these target modules (built-in ones need
    nothing): each module after its `depends=` and its `softdep=pre:` modules, recursively."""
    p, roots = _Planner(tree), [normalize(t) for t in targets]
    for name in roots:
        p.visit(name)
    needed = p.needed(roots)
    paths = tuple(tree.shipped[n] for n in p.order)
    optional = frozenset(tree.shipped[n] for n in p.order if n not in needed)
    return LoadPlan(paths, optional, tuple(dict.fromkeys(p.notes)))
