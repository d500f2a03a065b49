"""The C compile units of each shipped module, from the modules' DWARF (the `-dbg` package's copies).

A shipped `.ko` is stripped of its DWARF; Debian's `-dbg` package carries the same modules with it.
The package is read once as a stream (no module is unpacked to disk: ~5 GB for bookworm's 6.1),
every module's compile-unit names are taken from the top DIE of each unit (kgenv.elf.dwarfunits),
and the result is cached by the kernel's build-id together with each module's own build-id. A
vendor's own build dir ships its modules unstripped: then they are read where they are.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError

from kgenv.elf.dwarfunits import build_id, compile_units, unit_files
from kgenv.errors import ToolError
from kgenv.fsutil import cache_dir, write_atomic
from kgenv.manifest import Manifest

FORMAT = 2  # bump when the cached record changes


def module_name(path: str) -> str:
    """The module's name as the kernel knows it: the file name without .ko, '-' read as '_'."""
    return PurePosixPath(path).name.removesuffix(".ko").replace("-", "_")


def record(path: str, data: bytes) -> dict:
    """One module's cache entry: its units and, per unit, the other files its line table names."""
    try:
        files = unit_files(data)
    except ELFError as e:
        raise ToolError(f"{path}: cannot read its DWARF: {e}") from None
    return {
        "path": path,
        "build_id": build_id(data),
        "units": sorted(files),
        "files": {u: [f for f in fs if f != u] for u, fs in sorted(files.items())},
    }


def cache_path(m: Manifest) -> Path:
    return cache_dir() / "audit" / f"modunits-{m.kernel.build_id or 'unknown'}.json"


def cached(m: Manifest) -> dict[str, dict] | None:
    """The module → {path, build_id, units} map when it is cached (never reads a package)."""
    p = cache_path(m)
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return d.get("modules") if isinstance(d, dict) and d.get("format") == FORMAT else None


def module_units(m: Manifest, shipped: dict[str, Path], progress=None) -> tuple[dict[str, dict], str]:
    """The module map (cached by build-id) and where it came from: 'dbg-package', 'modules' (unstripped
    shipped modules), or '' with the reason when no module DWARF can be found."""
    found = cached(m)
    if found is not None:
        return found, ""
    if not shipped:
        return {}, "no shipped modules"
    first = next(iter(shipped.values()))
    if first.is_file() and compile_units(first.read_bytes()):
        modules = _from_files(shipped, progress)
        source = "modules"
    else:
        deb = dbg_deb(m)
        if deb is None:
            return {}, "no DWARF for the modules: neither unstripped modules nor the -dbg package in the cache"
        modules = _from_deb(m, deb, set(shipped), progress)
        source = f"debs/{deb.name}"
    write_atomic(cache_path(m), json.dumps({"format": FORMAT, "source": source, "modules": modules}, sort_keys=True))
    return modules, ""


def _from_files(shipped: dict[str, Path], progress) -> dict[str, dict]:
    out = {}
    for i, (name, ko) in enumerate(sorted(shipped.items()), 1):
        if progress:
            progress.tick(f"module units {i}/{len(shipped)}: {name}")
        out[name] = record(str(ko), ko.read_bytes())
    return out


def dbg_deb(m: Manifest) -> Path | None:
    """The env's `-dbg` package in the download cache, named by the vmlinux's recorded package."""
    ref = m.files.get("vmlinux")
    if ref is None or "=" not in ref.package:
        return None
    name, version = ref.package.split("=", 1)
    hits = sorted((cache_dir() / "debs").glob(f"{name}_{version.split(':', 1)[-1]}_*.deb"))
    return hits[0] if hits else None


def _from_deb(m: Manifest, deb: Path, wanted: set[str], progress) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if progress:
        progress.step(f"read module DWARF from {deb.name} (once per kernel)")
    for mod, path, data in dbg_modules(m, deb, wanted):
        if progress:
            progress.tick(f"module units: {len(out)}/{len(wanted)} {mod}")
        out[mod] = record(path, data)
    return out


def dbg_modules(m: Manifest, deb: Path, wanted: set[str]) -> Iterator[tuple[str, str, bytes]]:
    """(module, path under the modules dir, bytes) of each wanted module in the `-dbg` package, read
    as one stream; the vmlinux in it must be the env's (sha256), so the modules are its twins: the
    iteration ends in a ToolError otherwise."""
    prefix = f"./usr/lib/debug/lib/modules/{m.kernel.release}/"
    vmlinux = m.file_ref("vmlinux")
    seen_vmlinux = False
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = "./" + member.name.removeprefix("./")
                is_vmlinux = name == f"./usr/lib/debug/boot/{PurePosixPath(vmlinux.path).name}"
                if not (is_vmlinux or (name.startswith(prefix) and name.endswith(".ko"))):
                    continue
                f = tar.extractfile(member)
                if f is None:
                    continue
                if is_vmlinux:
                    h = hashlib.sha256()
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
                    if h.hexdigest() != vmlinux.sha256:
                        raise ToolError(f"{deb}: its vmlinux is not env {m.name}'s (sha256 differs)")
                    seen_vmlinux = True
                    continue
                mod = module_name(name)
                if mod in wanted:
                    yield mod, name.removeprefix(prefix), f.read()
    except (tarfile.TarError, OSError) as e:
        raise ToolError(f"{deb}: cannot read: {e}") from None
    finally:
        if proc.stdout:
            proc.stdout.close()
        proc.wait()
    if proc.returncode:
        raise ToolError(f"{deb}: dpkg-deb --fsys-tarfile failed (exit {proc.returncode})")
    if not seen_vmlinux:
        raise ToolError(f"{deb}: holds no vmlinux matching env {m.name}'s")
