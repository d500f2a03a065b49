"""A farm plan (PLAN.toml): which kernels, which fixes, which options; validated in one place."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from kgenv.errors import UserError
from kgenv.fsutil import sha256_file
from kgenv.manifest import NAME_RE

# A fix name becomes the module name (livepatch-<name>.ko): kgenv build's own limit.
FIX_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,55}$")
OUTCOMES = ("built", "refused")
KERNEL_FORMS = "an env name, debian:<abi> or debian:<release line>"


@dataclass(frozen=True)
class Fix:
    """One fix: the diff, the guest check that proves it, and what kgenv build must say."""

    name: str
    diff: Path
    check: Path | None
    expected: str
    diff_sha256: str
    check_sha256: str
    tus: tuple[str, ...] = ()  # extra translation units for header changes (kgenv build --tu)


@dataclass(frozen=True)
class Options:
    boot_test: bool = False
    jobs: int = 1
    root: Path | None = None  # one more directory plan paths may lie in (resolved); else only the plan's own
    boot_without_check: bool = False  # a built fix without a check boots as a load/enable/disable/unload proof


def roots(path: Path, options: Options) -> tuple[Path, ...]:
    """Where a plan's diff, check, fixture and fixtures paths may lead (after resolving symlinks)."""
    own = Path(path).resolve().parent
    return (own,) if options.root is None else (own, options.root)


@dataclass(frozen=True)
class Plan:
    path: Path
    sha256: str
    kernels: tuple[str, ...]
    fixes: tuple[Fix, ...]
    options: Options


def load(path: Path) -> Plan:
    """Parse and validate PLAN.toml; a UserError names the file and the first problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read plan ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    _only(data, {"kernels", "fixes", "fixtures", "options"}, path, "")
    options = _options(data.get("options", {}), path)
    kernels = _kernels(data.get("kernels"), path)
    fixes = _fixes(data, path, options)
    return Plan(path.resolve(), sha256_file(path), kernels, fixes, options)


def _only(table: dict, allowed: set[str], path: Path, where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise UserError(f"{path}: unknown key {where}{extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _options(table, path: Path) -> Options:
    if not isinstance(table, dict):
        raise UserError(f"{path}: [options] must be a table")
    _only(table, {"boot_test", "boot_without_check", "jobs", "root"}, path, "options.")
    boot = table.get("boot_test", False)
    bare = table.get("boot_without_check", False)
    jobs = table.get("jobs", 1)
    if not isinstance(boot, bool):
        raise UserError(f"{path}: options.boot_test must be true or false")
    if not isinstance(bare, bool):
        raise UserError(f"{path}: options.boot_without_check must be true or false")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 64:
        raise UserError(f"{path}: options.jobs must be an integer from 1 to 64")
    root = table.get("root")
    if root is None:
        return Options(boot, jobs, None, bare)
    if not isinstance(root, str) or not root:
        raise UserError(f"{path}: options.root must be a directory path (relative to the plan, or absolute)")
    resolved = (path.resolve().parent / root).resolve()
    if not resolved.is_dir():
        raise UserError(f"{path}: options.root: {root}: no such directory")
    return Options(boot, jobs, resolved, bare)


def _inside(f: Path, path: Path, where: str, value: str, options: Options) -> Path:
    """f (resolved) when it lies in the plan's directory or options.root; one-line UserError otherwise."""
    allowed = roots(path, options)
    if not any(f.is_relative_to(r) for r in allowed):
        raise UserError(
            f"{path}: {where}: {value} leads outside the plan's directory {allowed[0]}"
            + (f" and options.root {allowed[1]}" if len(allowed) > 1 else " (options.root allows one other directory)")
        )
    return f


def _kernels(value, path: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{path}: kernels must be a non-empty list of {KERNEL_FORMS}")
    for k in value:
        if not isinstance(k, str) or not _kernel_form_ok(k):
            raise UserError(f"{path}: kernels: {k!r} is not {KERNEL_FORMS}")
    dup = next((k for i, k in enumerate(value) if k in value[:i]), None)
    if dup:
        raise UserError(f"{path}: kernels: {dup!r} listed twice")
    return tuple(value)


def _kernel_form_ok(spec: str) -> bool:
    distro, sep, rest = spec.partition(":")
    if sep:
        return distro == "debian" and bool(re.fullmatch(r"[A-Za-z0-9.+~-]+", rest))
    return bool(NAME_RE.match(spec))


def _fixes(data: dict, path: Path, options: Options) -> tuple[Fix, ...]:
    fixes: dict[str, Fix] = {}
    dirs = data.get("fixtures", [])
    dirs = [dirs] if isinstance(dirs, str) else dirs
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        raise UserError(f"{path}: fixtures must be a directory or a list of directories")
    for d in dirs:
        for stem in _fixture_stems(path, d, options):
            _add(fixes, _fix(stem.name, {"fixture": str(stem)}, path, options), path)
    table = data.get("fixes", {})
    if not isinstance(table, dict):
        raise UserError(f"{path}: fixes must be tables [fixes.<name>]")
    for name, t in table.items():
        _add(fixes, _fix(name, t, path, options), path)
    if not fixes:
        raise UserError(f"{path}: no fixes: give [fixes.<name>] tables (diff, check, expected) or fixtures = DIR")
    return tuple(fixes.values())


def _add(fixes: dict[str, Fix], fix: Fix, path: Path) -> None:
    if fix.name in fixes:
        raise UserError(f"{path}: fix {fix.name!r} named twice")
    fixes[fix.name] = fix


def _fixture_stems(path: Path, d: str, options: Options) -> list[Path]:
    root = _inside((path.parent / d).resolve(), path, "fixtures", d, options)
    if not root.is_dir():
        raise UserError(f"{path}: fixtures: {d}: no such directory")
    stems = [f.with_suffix("") for f in sorted(root.glob("*.diff"))]
    if not stems:
        raise UserError(f"{path}: fixtures: {d}: holds no NAME.diff")
    return stems


def _fix(name: str, table, path: Path, options: Options) -> Fix:
    where = f"fixes.{name}"
    if not FIX_NAME_RE.match(name):
        raise UserError(f"{path}: {where}: a fix name is 1-55 of [A-Za-z0-9_-] (it names the module)")
    if not isinstance(table, dict):
        raise UserError(f"{path}: {where} must be a table")
    _only(table, {"diff", "check", "expected", "fixture", "tus"}, path, f"{where}.")
    table = {**_from_fixture(table["fixture"], path, where, options), **table} if "fixture" in table else table
    expected = table.get("expected")
    if expected not in OUTCOMES:
        raise UserError(f"{path}: {where}.expected must be one of {', '.join(OUTCOMES)}")
    diff = _file(table.get("diff"), path, f"{where}.diff", options)
    check = _file(table["check"], path, f"{where}.check", options) if table.get("check") else None
    if options.boot_test and expected == "built" and check is None and not options.boot_without_check:
        raise UserError(
            f"{path}: {where}.check is required when options.boot_test is on "
            "(options.boot_without_check = true boots it as a load/unload proof)"
        )
    tus = table.get("tus", [])
    if not isinstance(tus, list) or not all(isinstance(t, str) and t.endswith(".o") for t in tus):
        raise UserError(f"{path}: {where}.tus must be a list of object paths (fs/foo.o)")
    return Fix(name, diff, check, expected, sha256_file(diff), sha256_file(check) if check else "", tuple(tus))


def _from_fixture(stem, path: Path, where: str, options: Options) -> dict:
    """NAME.diff, NAME.check (if any) and the outcome recorded in NAME.expect."""
    if not isinstance(stem, str) or not stem:
        raise UserError(f"{path}: {where}.fixture must be a path without suffix (dir/NAME)")
    base = _inside((path.parent / stem).resolve(), path, f"{where}.fixture", stem, options)
    expect = _inside(base.with_name(base.name + ".expect").resolve(), path, f"{where}.fixture", stem, options)
    try:
        outcome = tomllib.loads(expect.read_text()).get("outcome")
    except OSError:
        raise UserError(f"{path}: {where}.fixture: {expect}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{expect}: not valid TOML ({e})") from None
    check = base.with_name(base.name + ".check")
    return {
        "diff": str(base.with_name(base.name + ".diff")),
        "expected": outcome,
        **({"check": str(check)} if check.is_file() else {}),
    }


def _file(value, path: Path, where: str, options: Options) -> Path:
    if not isinstance(value, str) or not value:
        raise UserError(f"{path}: {where} must be a file path (relative to the plan)")
    f = _inside((path.parent / value).resolve(), path, where, value, options)
    if not f.is_file():
        raise UserError(f"{path}: {where}: {value}: no such file")
    return f
