"""`kgenv build FIX.DIFF`: diff → compile orig/patched → changes → map → generate → Kbuild → klp → verify."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import tarfile
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kgenv import __version__
from kgenv.build import abi, clones, diffapply, gensrc, headers, skeleton
from kgenv.build import changes as changes_mod
from kgenv.build.compile import CompileError, cmd_file, compile_tus
from kgenv.build.kbuild import build_module
from kgenv.build.report import BootSummary, BuildReport, EnvInfo, FixInfo, FunctionRecord, ResultInfo, ToolInfo
from kgenv.build.target import (
    VMLINUX,
    Resolver,
    Target,
    gnu_build_id,
    load_plan,
    modname_literal,
    shipped_modules,
)
from kgenv.build.target import find as find_target
from kgenv.elf import klp
from kgenv.elf.symbols import STB_LOCAL, STT_FILE, SymbolIndex
from kgenv.env import headerusers, kbuildcmd
from kgenv.errors import RefusedError, ToolError, UserError, describe
from kgenv.fsutil import is_sha256, open_regular, sha256_file, sha256_stream, write_atomic
from kgenv.manifest import Manifest
from kgenv.progress import QUIET
from kgenv.runtime.base import Mount, Runtime
from kgenv.verify import verify
from kgenv.verify.mapping import ObjectFile
from kgenv.verify.records import IDENTICAL

if TYPE_CHECKING:
    from kgenv.boot.record import Boot
    from kgenv.build.gensrc import Generated

SECTIONS = "-ffunction-sections -fdata-sections"
_CLONE = re.compile(r"\.(isra|constprop|part|cold|lto_priv|localalias)(\.\d+)?")
TREE_OUT = "/kgenv-tree"
_COLD = re.compile(r"\.cold(\.\d+)?$")
# refusal classes (a refused function's `reason` in report.json, the refusal line's first word)
# refusal classes of the stages here (gensrc and klp have their own): docs/build.md's table
ICF = "identical-code-folding"
NOTHING_REGISTERED = "no-function-registered"
ASSEMBLY = "assembly-change"
DELETES = "file-deleted"
BUILD_FILES = "build-file-change"
HEADERS = "header-change"
DATA = "data-change"
NO_CHANGE = "no-code-change"
NOT_REPRODUCED = "env-does-not-reproduce"
CLONE = "ipa-clone"
AMBIGUOUS_SYMBOL = "ambiguous-symbol"
BOOT_FAILED = "boot-test-failed"
NO_COMPILE = "fix-does-not-compile"
OUTPUTS = ".kgenv-outputs.json"  # in OUTDIR: the files the last run wrote there, name -> sha256
REPORT = "report.json"


class Refusal(RefusedError):
    """A check said no, in one line that starts with its class; carries per-function records."""

    def __init__(self, reason: str, functions: list[FunctionRecord] | None = None, cls: str = ""):
        super().__init__(f"{cls}: {reason}" if cls else reason)  # no cls: the reason starts with its class
        self.functions = functions or []


@dataclass
class Request:
    diff: Path
    env: Manifest
    outdir: Path
    name: str
    extra_tus: tuple[str, ...] = ()
    keep_tmp: bool = False
    jobs: int = 2
    boot_test: bool = False
    check: Path | None = None
    allow_build_files: bool = False  # a reviewed fix may change Makefile/Kbuild/Kconfig/scripts


def _later():
    """A Unit field the named stage sets: reading it earlier is a bug (AttributeError), never None."""
    return field(init=False, repr=False)


@dataclass
class Unit:
    """One touched translation unit on its way through the stages."""

    tu: str  # fs/proc/cmdline.o
    source: str  # fs/proc/cmdline.c
    original: Path = _later()  # compile
    patched: Path = _later()  # compile
    target: Target = _later()  # compile
    changes: changes_mod.Changes = _later()  # changes
    static_signatures: list[str] = field(default_factory=list)  # statics whose prototype changed (interface)
    resolver: Resolver = _later()  # map
    replaced: list[str] = field(default_factory=list)  # source-level names to register (map)
    generated: Generated = _later()  # generate


@dataclass
class Result:
    """What one build did: the report's content and where the files went."""

    report: BuildReport
    exit_code: int
    module: Path | None = None


def default_name(diff: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", diff.name.removesuffix(".diff").removesuffix(".patch"))
    return stem.strip("-")[:55] or "fix"


def check_outdir(outdir: Path, create: bool = True) -> Path:
    """-o before any build work: a directory kgenv can create files in (made if missing, or with
    create=False its nearest existing parent must take it); one-line UserError for a file, /proc or
    anything read-only."""
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"-o {outdir}: not a directory")
    where = outdir
    if not create:
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise UserError(f"-o {outdir}: {where} is not a directory")
    try:
        if create:
            outdir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=where, prefix=".kgenv-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"-o {outdir}: cannot write there ({e.strerror or e})") from None
    return outdir


def previous_outputs(outdir: Path) -> dict[str, str]:
    """name -> sha256 of the files a previous kgenv build wrote into outdir: its OUTPUTS record, or
    (a report.json from before that record) the module its report names. Never a path outside
    outdir, never report.json itself (every run rewrites it)."""
    names: dict[str, str] = {}
    try:
        data = json.loads(outdir.joinpath(OUTPUTS).read_text())
        if isinstance(data, dict):  # a hash is required: a hand-edited record cannot name any file
            names = {k: v for k, v in data.items() if isinstance(k, str) and is_sha256(v)}
    except (OSError, ValueError):
        names = _outputs_of_report(outdir)
    return {n: h for n, h in names.items() if n not in (REPORT, OUTPUTS, "", ".", "..") and "/" not in n}


def _outputs_of_report(outdir: Path) -> dict[str, str]:
    """The module an older report.json says its built run wrote, read loosely (only the keys needed:
    a report of another kgenv version may lack newer keys). Its sources carry no recorded hash, so
    a user may have edited them: they stay. The removal deletes the module only while it still has
    the recorded sha256, i.e. while the report describes this directory."""
    try:
        doc = json.loads((outdir / REPORT).read_text())
        result, fix = doc["result"], doc["fix"]
        module, digest, name, tus = result["module"], result["module_sha256"], fix["name"], fix["tus"]
    except (OSError, ValueError, TypeError, KeyError):
        return {}
    if not all(isinstance(v, str) and v for v in (module, name)) or not isinstance(tus, list) or not is_sha256(digest):
        return {}
    return {Path(module).name: digest}


def remove_previous_outputs(outdir: Path) -> list[str]:
    """A new run's outputs replace the last run's as a whole: delete the regular files the last
    run wrote (still with the content it wrote, where it recorded a hash); leave everything else."""
    removed = []
    for name, digest in sorted(previous_outputs(outdir).items()):
        f = outdir / name
        try:
            fd = open_regular(f)
        except (OSError, ToolError):
            continue  # gone, or a symlink/special file kgenv did not write
        with os.fdopen(fd, "rb") as fh:
            ours = sha256_stream(fh) == digest
        if ours:
            f.unlink()
            removed.append(name)
    outdir.joinpath(OUTPUTS).unlink(missing_ok=True)
    return removed


def check_name(name: str) -> str:
    if not skeleton.NAME_RE.fullmatch(name):
        raise UserError(f"--name {name!r}: use 1-55 characters of [A-Za-z0-9_-]")
    return name


class Build:
    """One `kgenv build` run: each stage method adds to the units, functions and timings the report
    is made of, so a refused or failed build still explains itself."""

    def __init__(self, req: Request, rt: Runtime, progress=QUIET):
        self.req, self.rt, self.progress = req, rt, progress
        self.m = req.env
        self.stages: dict[str, float] = {}
        self.units: list[Unit] = []
        self.functions: list[FunctionRecord] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="kgenv-build-"))
        self.diff: diffapply.FixDiff | None = None
        self.overlay: Path | None = None  # the patched files (diff), over the env's tree in every compile
        self.klp_symbols: list[str] = []  # "<obj>.<name>,<sympos>", one per converted symbol
        self.guard_build_ids: dict[str, str] = {}  # what the module's pre_patch guard requires (kbuild)
        self.boot: Boot | None = None
        self.notes: list[str] = []  # what the report must say: how this build was allowed, what the generator did
        self.written: dict[str, str] = {}  # OUTDIR files this run wrote (hand-off), name -> sha256

    # -- running -----------------------------------------------------------------------------

    def run(self) -> Result:
        outcome, reason, code, module = "built", "", 0, None
        check_outdir(self.req.outdir)  # before any work: an unusable -o is an error without a report
        try:
            remove_previous_outputs(self.req.outdir)  # refused or failed, no earlier module stays behind
            module = self._stages()
        except Refusal as exc:
            outcome, reason, code = "refused", str(exc), 1
            self.functions.extend(exc.functions)
        except RefusedError as exc:
            outcome, reason, code = "refused", str(exc), 1
        except (UserError, ToolError) as exc:
            outcome, reason, code = "error", str(exc), 2
        except Exception as exc:  # a file vanished, facts out of step, a bug: still a report
            outcome, reason, code = "error", _unexpected(exc), 2
        finally:
            if not self.req.keep_tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)
        report = self._report(outcome, reason, code, module)
        try:
            self.req.outdir.mkdir(parents=True, exist_ok=True)
            if self.written:
                write_atomic(self.req.outdir / OUTPUTS, json.dumps(self.written, indent=1, sort_keys=True) + "\n")
            write_atomic(self.req.outdir / REPORT, report.to_json())
        except OSError as exc:  # no report, so no module either
            raise self._take_back(exc) from None
        return Result(report, code, module)

    def _timed(self, stage: str, fn, *args):
        self.progress.step(stage)
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.stages[stage] = round(self.stages.get(stage, 0) + time.monotonic() - t0, 3)

    def _stages(self) -> Path:
        self._timed("check", self._check_env)
        overlay = self._timed("diff", self._apply_diff)
        self._timed("compile", self._compile, overlay)
        self._timed("changes", self._changes)
        self._drop_unchanged()  # byte-identical code keeps working with the kernel's objects as it did
        self._timed("interface", self._interface)
        self._timed("map", self._map)
        self._timed("generate", self._generate, overlay)
        self._must_register()
        ko = self._timed("kbuild", self._kbuild)
        self._timed("klp", self._klp, ko)
        if self.req.boot_test:
            self._timed("boot", self._boot, ko)
        return self._hand_off(ko)

    # -- stages ------------------------------------------------------------------------------

    def _check_env(self) -> None:
        """Before any compile: the shipped files later stages read are recorded and cached, and
        the image is in the engine (a vendor env may lack a vmlinuz to boot, say)."""
        for role in ("symvers", "vmlinuz") if self.req.boot_test else ("symvers",):
            self.m.file(role)
        if not self.rt.image_id(self.m.image.id):
            raise ToolError(
                f"env {self.m.name}: image {self.m.image.id[:19]} is not in the engine; "
                f"run `kgenv envs restore {self.m.name}`"
            )

    def _apply_diff(self) -> Path:
        d = self.diff = diffapply.load(self.req.diff)
        if d.assembly:
            raise Refusal(
                f"{self.req.diff}: changes assembly file(s) {', '.join(d.assembly)}: only C functions can be replaced",
                cls=ASSEMBLY,
            )
        if any(f.deleted for f in d.files):
            raise Refusal(f"{self.req.diff}: deletes a file; a live patch cannot remove code units", cls=DELETES)
        if d.build_files:
            if not self.req.allow_build_files:
                raise Refusal(
                    f"{self.req.diff}: changes build file(s) {_names(d.build_files)}, which make runs as root in "
                    "the build container; review them and pass --allow-build-files",
                    cls=BUILD_FILES,
                )
            self.notes.append(f"build file(s) changed, allowed by --allow-build-files: {', '.join(d.build_files)}")
        tus = list(dict.fromkeys([*d.translation_units, *self.req.extra_tus]))
        tree = self._fetch_files([_source(tu) for tu in tus] + list(d.paths))
        overlay = self.overlay = self.tmp / "overlay"
        diffapply.apply(d, tree, overlay)
        if d.headers and self.req.extra_tus:
            self.notes.append(f"header(s) {', '.join(d.headers)}: rebuilt the units the diff and --tu name")
            self.notes += self._not_named(d, tus)
        elif d.headers:
            tus = list(dict.fromkeys([*tus, *self._header_users(d, tree, overlay)]))
        if not tus and d.headers:
            raise Refusal(f"{self.req.diff}: no unit of the running kernel uses the changed header(s)", cls=NO_CHANGE)
        if not tus:
            raise UserError(f"{self.req.diff}: touches no C translation unit")
        self.units = [Unit(tu, _source(tu)) for tu in tus]
        return overlay

    def _header_users(self, d: diffapply.FixDiff, tree: Path, overlay: Path) -> list[str]:
        """Every unit a header change reaches (from the running kernel's debug info), or a refusal
        when they cannot all be found or are too many for one live patch."""
        try:
            index = headerusers.index(self.m, shipped_modules(self.m), self.progress)
            reach = headers.reach(index, list(d.headers), tree, overlay)
        except ToolError as exc:  # the users cannot all be known: the engineer can still name them
            raise Refusal(f"{self.req.diff}: {exc}; name the units to patch with --tu", cls=HEADERS) from None
        if reach.problem:
            raise Refusal(f"{self.req.diff}: {reach.problem}", cls=HEADERS)
        counts = ", ".join(f"{h} {n}" for h, n in reach.counts.items())
        self.notes.append(f"header(s) changed: the units whose debug info uses them were rebuilt ({counts})")
        return [u.tu for u in reach.users]

    def _not_named(self, d: diffapply.FixDiff, tus: list[str]) -> list[str]:
        """--tu overrides the search for a header's users; the report still says which units the
        running kernel's debug info names that the override leaves out."""
        try:
            index = headerusers.index(self.m, shipped_modules(self.m), self.progress)
            users = {u.tu for h in d.headers for u in index.users(h)} - set(tus)
        except ToolError as exc:
            return [f"the units that use the changed header(s) are unknown: {exc}"]
        if not users:
            return []
        return [
            f"{len(users)} unit(s) using the changed header(s) by debug info were not rebuilt: {_names(sorted(users))}"
        ]

    def _drop_unchanged(self) -> None:
        """Units rebuilt only because they use a changed header, and unchanged by it, patch nothing."""
        same = [u.tu for u in self.units if not u.changes.changed and not u.changes.new]
        if same and len(same) < len(self.units):
            self.units = [u for u in self.units if u.tu not in same]
            self.notes.append(f"rebuilt, unchanged by the fix: {', '.join(same)}")

    def _fetch_files(self, paths: list[str]) -> Path:
        """The touched files (and each parent directory, to see symlinks) out of the env's tree."""
        parents = {str(p) for rel in paths for p in PurePosixPath(rel).parents if str(p) != "."}
        names = sorted(parents) + sorted(set(paths))
        out = self.tmp / "tree-files"
        out.mkdir()
        script = (
            "set -e; for p in "
            + " ".join(shlex.quote(n) for n in names)
            + '; do if [ -e "$p" ] || [ -L "$p" ]; then printf "%s\\n" "$p"; fi; done'
            f" | tar --no-recursion -cf {TREE_OUT}/files.tar -T -"
        )
        r = self.rt.run(
            self.m.image.id,
            ["bash", "-c", script],
            [Mount(out.resolve(), TREE_OUT, False)],
            workdir=self.m.kernel.srctree,
        )
        if r.exit_code:
            raise ToolError(f"reading the env's source failed: {r.output[-500:]}")
        tree = self.tmp / "tree"
        # the container wrote files.tar: read it only as a regular file, never through a symlink
        with os.fdopen(open_regular(out / "files.tar", root=out), "rb") as f, tarfile.open(fileobj=f) as tar:
            _extract(tar, tree)
        return tree

    def _compile(self, overlay: Path) -> None:
        tus = [u.tu for u in self.units]
        with ThreadPoolExecutor(max_workers=max(1, min(2, self.req.jobs))) as pool:
            orig = pool.submit(compile_tus, self.rt, self.m, tus, self.tmp / "orig", extra_cflags=SECTIONS)
            patched = pool.submit(
                compile_tus, self.rt, self.m, tus, self.tmp / "patched", overlay=overlay, extra_cflags=SECTIONS
            )
            o = orig.result()  # the unpatched tree failing is the env's problem (error 2)
            try:
                p = patched.result()
            except CompileError as exc:
                if not exc.first_error:  # no compiler error: a killed container, say — not the fix's fault
                    raise
                raise Refusal(
                    f"the patched {_names(u.source for u in self.units)} does not compile (the original does): "
                    f"{exc.first_error}",
                    cls=NO_COMPILE,
                ) from None
        for u in self.units:
            u.original, u.patched = o[u.tu], p[u.tu]
            u.target = find_target(self.m, self.tmp / "orig" / cmd_file(u.tu))

    def _interface(self) -> None:
        """Code can be replaced, the running kernel's objects and callers cannot: refuse a fix that
        changes a struct layout, an enumerator, a variable's type or a prototype they depend on."""
        headers = set(self.diff.headers) if self.diff else set()
        defined = set()
        for u in self.units:
            defined |= {f.name for f in SymbolIndex.open(u.patched).symbols if f.is_func and f.defined}
        refusals = []
        for u in self.units:
            v = abi.compare(u.source, u.original, u.patched, headers, defined)
            refusals += [f"{r} ({u.source})" for r in v.refusals]
            u.static_signatures = v.static_signatures
        if refusals:
            raise Refusal("; ".join(refusals[:3]) + (f"; and {len(refusals) - 3} more" if len(refusals) > 3 else ""))

    def _changes(self) -> None:
        hunks = {f.path: f.hunks for f in self.diff.files} if self.diff else {}
        for u in self.units:
            # the diff's line map: a __LINE__ argument that only moved with the lines is no change
            lines = changes_mod.line_map(hunks[u.source]) if u.source in hunks else None
            u.changes = changes_mod.compare(u.original, u.patched, u.tu, lines)
            # new variables are the patch module's own (gensrc notes them); changed or removed
            # ones the running kernel holds cannot be patched
            data = changes_mod.refused_data(u.changes)
            if data:
                raise Refusal(
                    f"{u.source}: the fix changes data ({_names(d.name + ' ' + d.status for d in data)}); "
                    "data the running kernel holds is not re-initialised by a live patch",
                    cls=DATA,
                )
            for f in u.changes.functions:
                if f.status != changes_mod.UNCHANGED and f.section.startswith(".init"):
                    raise Refusal(
                        f"{u.source}: the fix changes __init code ({f.name}), which has already "
                        "run and been freed in the running kernel",
                        cls=gensrc.FREED_CODE,
                    )
        if not any(u.changes.changed for u in self.units):
            raise Refusal(f"{self.req.diff}: the fix changes no function's code", cls=NO_CHANGE)

    def _map(self) -> None:
        """Every changed function must be the running kernel's, out of line and traceable."""
        failures = []
        for u in self.units:
            report = verify([ObjectFile(u.original, u.tu)], u.target.binary_path)
            verdicts = {v.name: v for v in report.verdicts}
            differs = [v.name for v in report.verdicts if v.verdict == "differs"]
            if differs:
                raise Refusal(
                    f"{u.tu}: rebuilt with {SECTIONS} it no longer matches the running "
                    f"{u.target.objname} ({_names(differs)}): the env does not reproduce it",
                    [
                        self._fn(u, v.name, "differs", reason=v.reason, address=v.address, note=_first_difference(v))
                        for v in report.verdicts
                        if v.verdict == "differs"
                    ],
                    cls=NOT_REPRODUCED,
                )
            u.resolver = Resolver(u.target, ObjectFile(u.original, u.tu))
            folded = _Folding(u)
            names = _to_replace(u.changes)
            # a changed IPA clone: its callers are replaced instead (kgenv/build/clones.py); a static
            # whose prototype the fix changes is replaced, and so must every caller be: none may call it
            # with the old arguments (by a tail jump, from a stored pointer)
            prototype = [n for n in u.static_signatures if u.resolver.present(n, "function")]
            changed = [n for n in names if clones.is_clone(n)] + _removed_clones(u.changes) + prototype
            via = clones.callers(u.resolver.obj, list(dict.fromkeys(changed)), u.target.is_module)
            failures += [
                self._fn(u, c, "refused", reason=abi.SIGNATURE, note=f"changes its prototype and {why}")
                if c in prototype
                else self._fn(
                    u, c, "refused", reason=CLONE, note=f"runs in place of the changed source function and {why}"
                )
                for c, why in via.refused.items()
            ]
            self.notes += [f"{u.source}: {n}" for n in via.notes()]
            for orig_name in dict.fromkeys([*(n for n in names if not clones.is_clone(n)), *via.replace]):
                if _CLONE.search(orig_name):
                    failures.append(
                        self._fn(
                            u,
                            orig_name,
                            "refused",
                            reason=CLONE,
                            note=f"only the compiler's copy {orig_name} runs and its ABI may differ from the "
                            "source function's (callers are replaced only for .isra/.constprop/.part clones)",
                        )
                    )
                    continue
                because = [] if orig_name in names else via.replace.get(orig_name, [])  # changed itself: its own record
                v = verdicts.get(orig_name)
                if v is None or v.verdict != IDENTICAL:
                    failures.append(
                        self._fn(
                            u,
                            orig_name,
                            "refused",
                            reason=CLONE if because else v.verdict if v else "missing",
                            note=_for_clones(because, (v.note or v.trace or v.reason) if v else "not in the object"),
                        )
                    )
                    continue
                aliases = folded.aliases(orig_name)
                if aliases:
                    failures.append(
                        self._fn(
                            u,
                            orig_name,
                            "refused",
                            reason=CLONE if because else ICF,
                            address=v.address,
                            note=_for_clones(because, f"shares its address with {_names(aliases)}"),
                        )
                    )
                    continue
                u.replaced.append(orig_name)
                pos = u.resolver.position(orig_name)
                self.functions.append(
                    self._fn(
                        u,
                        orig_name,
                        "replaced",
                        sympos=pos[1] if pos else 0,
                        address=v.address,
                        trace=v.trace,
                        note=_for_clones(because, ""),
                    )
                )
        if failures:
            self.functions.extend(failures)
            raise Refusal("; ".join(_refusal_line(f) for f in failures), [])

    def _fn(self, u: Unit, name: str, verdict: str, **kw) -> FunctionRecord:
        return FunctionRecord(name, u.tu, u.target.objname, verdict, **kw)

    def _generate(self, overlay: Path) -> None:
        from kgenv.build.source import generate_source

        replaced = [n for u in self.units for n in u.replaced]
        twins = {n for n in replaced if replaced.count(n) > 1}  # same-named statics of two files
        for u in self.units:
            keep = set(u.replaced) | {_base(n) for n in u.changes.new}
            cmd = self.tmp / "patched" / cmd_file(u.tu)
            context = gensrc.Context(
                u.target.objname,
                u.target.is_module,
                modname_literal(kbuildcmd.read_command(cmd)),
                f"kgenv_{_slug(u.tu)}__",
                _local_static(u),
            )
            g = generate_source(
                self.rt,
                self.m,
                u.source,
                overlay,
                cmd,
                keep,
                u.resolver.present,
                self.tmp / "gen" / _slug(u.tu),
                progress=self.progress,
                context=context,
                alias_prefix=f"livepatch_{_slug(u.tu)}__" if twins & set(u.replaced) else gensrc.ALIAS_PREFIX,
            )
            if g.refusals:
                raise Refusal("; ".join(g.refusals) + f" (generating {u.source})")
            u.generated = g
            # fresh once-flags, pins, copies: reviewable, once each
            self.notes += [f"{u.source}: {n}" for n in dict.fromkeys(g.notes)]

    def _must_register(self) -> None:
        """The safety net under every stage above: a module that registers no function is never built."""
        if not any(f.verdict == "replaced" for f in self.functions):
            raise Refusal(
                f"{NOTHING_REGISTERED}: the fix replaces no function of the running kernel "
                "(a livepatch module that registers nothing patches nothing)"
            )

    def _kbuild(self) -> Path:
        name = self.req.name
        src = self.tmp / "module"
        src.mkdir()
        sources = []
        for u in self.units:
            fname = f"{name}-{_slug(u.tu)}.c"
            # the tree's bytes as they were (a Latin-1 comment in context stays Latin-1)
            (src / fname).write_bytes(u.generated.text.encode(errors="surrogateescape"))
            flags = skeleton.tu_flags(
                kbuildcmd.read_command(self.tmp / "patched" / cmd_file(u.tu)),
                self.m.kernel.srctree,
                self.m.kernel.objtree,
            )
            local = f"-I{self.m.kernel.srctree}/{PurePosixPath(u.source).parent}"
            sources.append(skeleton.Source(fname, (local, *(f for f in flags if f != local))))
        aliases = {(u.tu, n): a for u in self.units for n, a in u.generated.aliases.items()}
        reps = [
            skeleton.Replacement(f.object, f.name, f.sympos, aliases[f.tu, f.name])
            for f in self.functions
            if f.verdict == "replaced"
        ]
        # every id from the binary the proof was made against: the recorded field must agree with it
        vmlinux = gnu_build_id(self.m.file("vmlinux"))
        if vmlinux != self.m.kernel.build_id:
            raise UserError(
                f"env {self.m.name}: its vmlinux has build-id {vmlinux}, the manifest records {self.m.kernel.build_id}"
            )
        modules = {u.target.objname: gnu_build_id(u.target.binary_path) for u in self.units if u.target.is_module}
        self.guard_build_ids = skeleton.guard_ids(vmlinux, modules)
        namespaces = skeleton.import_namespaces(
            skeleton.symbol_namespaces(self.m.file("symvers").read_text()),
            skeleton.referenced_symbols(u.patched for u in self.units),
        )
        (src / f"{name}.c").write_text(
            skeleton.render_registration(
                name, self.m.kernel.release, reps, self.guard_build_ids, self._pinned(), namespaces
            )
        )
        (src / "Kbuild").write_text(skeleton.render_kbuild(name, f"{name}.c", sources))
        return build_module(
            self.rt,
            self.m,
            src,
            self.tmp / "kbuild-out",
            allow_undefined=True,
            overlay=self.overlay,  # the generated code sees the patched headers, as the patched compile did
            progress=self.progress,
        )

    def _klp(self, ko: Path) -> None:
        """Undefined symbols become .klp.sym relocations, but for exports of vmlinux and of modules
        the patch does not target (the module loader binds those)."""
        exported = _exported(self.m)
        self._new_globals_are_new(exported)
        targets = {u.target.objname for u in self.units if u.target.is_module}
        index = SymbolIndex.open(ko)
        undefined = sorted(
            {s.name for s in index.symbols if s.name and not s.defined and s.type != STT_FILE and s.symidx}
        )
        labels = {label: (u, real) for u in self.units for label, real in u.generated.labels.items()}
        mapping: dict[str, tuple[str, int, str]] = {}  # symbol here -> (object, sympos, its name there)
        unknown: list[str] = []
        ambiguous: list[str] = []
        vmlinux = None
        for name in undefined:
            if name in labels:  # a static of one TU (or THIS_MODULE): that TU's object, never an export
                u, real = labels[name]
                pos = _this_module(u) if real == gensrc.THIS_MODULE_SYMBOL else u.resolver.position(real)
                if pos is None:
                    unknown.append(real)
                else:
                    mapping[name] = (*pos, real)
                continue
            if name == "__fentry__":
                continue
            # a module unit's own global: its module's symbol, even where another object exports the
            # name (the loader would bind that export), and never a dependency on a target module
            own = {pos for u in self.units if u.target.is_module and (pos := u.resolver.own_position(name))}
            owner = exported.get(name)
            if not own and owner is not None and owner not in targets:
                continue  # vmlinux's or another module's export: the module loader binds it
            found = own or set(filter(None, (u.resolver.position(name) for u in self.units)))
            if len(found) > 1:  # same-named globals of two objects: which one each TU means is lost in the link
                ambiguous.append(name)
                continue
            pos = next(iter(found), None)
            if pos is None:
                if vmlinux is None:
                    vmlinux = _vmlinux_resolver(self.m, self.units)
                pos = vmlinux.position(name) if vmlinux else None
            if pos is None:
                unknown.append(name)
            else:
                mapping[name] = (*pos, name)
        if unknown:
            raise Refusal(
                f"the module needs {_names(unknown)}, which the running kernel neither exports nor has as a symbol",
                cls=gensrc.MISSING_SYMBOL,
            )
        if ambiguous:
            raise Refusal(
                f"the module needs {_names(ambiguous)}, a name that means a different symbol in each of the "
                f"patched objects ({', '.join(sorted({u.target.objname for u in self.units}))})",
                cls=AMBIGUOUS_SYMBOL,
            )
        if mapping:
            try:
                klp.convert(ko, mapping, names=self._function_names())
            except klp.SpecialSectionError as exc:
                raise Refusal(str(exc), self._special_sections(exc)) from None
        self.klp_symbols = sorted(f"{obj}.{real},{pos}" for obj, pos, real in mapping.values())

    def _new_globals_are_new(self, exported: dict[str, str]) -> None:
        """A new global the module defines starts fresh; where the running kernel already has a
        global of that name (a definition moved between files), its code keeps using that copy."""
        clash = [
            d.name
            for u in self.units
            for d in u.changes.data
            if d.status == changes_mod.NEW
            and d.binding != "local"
            and (d.name in exported or any(s.bind != STB_LOCAL for s in u.resolver.binary.lookup(d.name)))
        ]
        if clash:
            raise Refusal(
                f"new global variable(s) {_names(clash)}: the running kernel already has a global of that name, "
                "whose state a fresh copy in the patch module would not share",
                cls=gensrc.NEW_STATE,
            )

    def _special_sections(self, exc: klp.SpecialSectionError) -> list[FunctionRecord]:
        """The functions whose load-time entries need the target module: replaced → refused."""
        notes: dict[str, list[str]] = {}
        for fn, sec, sym in exc.sites:
            notes.setdefault(fn, []).append(f"{sym} ({sec})")
        out, keep = [], []
        for f in self.functions:
            if f.verdict == "replaced" and f.object == exc.objname and f.name in notes:
                out.append(dataclasses.replace(f, verdict="refused", reason=klp.SPECIAL_SECTION, note=""))
            else:
                keep.append(f)
        self.functions = keep
        unit = next(u for u in self.units if u.target.objname == exc.objname)
        out += [
            self._fn(unit, fn, "refused", reason=klp.SPECIAL_SECTION) for fn in notes if fn not in {f.name for f in out}
        ]
        return [
            dataclasses.replace(f, note=f"uses {exc.objname}'s own {', '.join(dict.fromkeys(notes[f.name]))}")
            for f in out
        ]

    def _boot(self, ko: Path):
        from kgenv.boot import boot_test

        vmlinuz = self.m.file("vmlinuz")
        sympos = "".join(self._sympos_line(f) for f in self.functions if f.verdict == "replaced")
        loads = load_plan(self.m, [u.target for u in self.units])
        self.notes += loads.notes
        boot = boot_test(
            ko,
            vmlinuz,
            check=self.req.check,
            sympos=sympos,
            targets=loads.paths,
            optional=loads.optional,
            keep_tmp=self.req.keep_tmp,
            pinned=self._pinned(),
        )
        self.boot = boot
        if not boot.passed:
            raise Refusal(f"boot test failed: {boot.reason}", cls=BOOT_FAILED)

    def _function_names(self) -> dict[str, str]:
        """The module's symbols that stand for a replaced function: its alias and renamed definition."""
        return {
            sym: n for u in self.units for n, a in u.generated.aliases.items() for sym in (a, gensrc.NEW_PREFIX + n)
        }

    def _pinned(self) -> bool:
        return any(u.generated.pinned_by for u in self.units)

    def _sympos_line(self, f: FunctionRecord) -> str:
        """ "obj func sympos [offset from _text]" for the guest to find in /proc/kallsyms."""
        line = f"{f.object} {f.name} {f.sympos}"
        unit = next(u for u in self.units if u.tu == f.tu)
        text = unit.resolver.binary.index.address("_text") if not unit.target.is_module else None
        if text is not None and f.address is not None:
            line += f" {f.address - text:#x}"
        return line + "\n"

    def _hand_off(self, ko: Path) -> Path:
        """Module, sources and Kbuild into OUTDIR, all or none: a failed write (a full disk) takes
        back what this run already wrote there and becomes one line naming OUTDIR."""
        out = self.req.outdir
        src = self.tmp / "module"
        dest = out / f"livepatch-{self.req.name}.ko"
        try:
            out.mkdir(parents=True, exist_ok=True)
            for f, target in [*((f, out / f.name) for f in sorted(src.glob("*.c")) + [src / "Kbuild"]), (ko, dest)]:
                data = f.read_bytes()
                write_atomic(target, data)
                self.written[target.name] = hashlib.sha256(data).hexdigest()
        except OSError as exc:
            raise self._take_back(exc) from None
        return dest

    def _take_back(self, exc: OSError) -> UserError:
        """Remove the outputs this run wrote (a module without its sources or its report is not
        handed off) and say why in one line."""
        for name in [*self.written, OUTPUTS]:
            (self.req.outdir / name).unlink(missing_ok=True)
        self.written.clear()
        return UserError(
            f"{self.req.outdir}: cannot write the outputs ({exc.strerror or exc}); the partial outputs were removed"
        )

    # -- report ------------------------------------------------------------------------------

    def _report(self, outcome: str, reason: str, code: int, module: Path | None) -> BuildReport:
        m, req = self.m, self.req
        return BuildReport(
            kgenv=ToolInfo(__version__, shlex.join(self._reproducer())),
            env=EnvInfo(m.name, m.image.id, m.kernel.release, m.kernel.build_id, m.kernel.version),
            fix=FixInfo(
                req.name,
                str(req.diff),
                sha256_file(req.diff) if req.diff.is_file() else "",
                tuple(self.diff.paths) if self.diff else (),
                tuple(u.tu for u in self.units),
                tuple(self.notes),
            ),
            result=ResultInfo(
                outcome,
                code,
                reason,
                str(module) if module else "",
                sha256_file(module) if module else "",
                tuple(self.klp_symbols),
                self.guard_build_ids,
            ),
            functions=tuple(self.functions),
            stages=self.stages,
            boot=BootSummary.of(self.boot) if self.boot is not None else None,
        )

    def _reproducer(self) -> list[str]:
        cmd = [
            "kgenv",
            "build",
            str(self.req.diff),
            "--env",
            self.m.name,
            "--image",
            self.m.image.id,
            "-o",
            str(self.req.outdir),
            "--name",
            self.req.name,
        ]
        for tu in self.req.extra_tus:
            cmd += ["--tu", tu]
        if self.req.allow_build_files:
            cmd.append("--allow-build-files")
        if self.req.boot_test:
            cmd.append("--boot-test")
        if self.req.check:
            cmd += ["--check", str(self.req.check)]
        return cmd


def _unexpected(exc: Exception) -> str:
    """One line for an exception no stage anticipated; KGENV_DEBUG=1 also prints where it arose."""
    if os.environ.get("KGENV_DEBUG"):
        traceback.print_exception(exc)
    return describe(exc)


def _to_replace(changes: changes_mod.Changes) -> list[str]:
    """The running kernel's functions the fix changes, in order. A changed `.cold` part (an error
    path gcc moved out, printk being __cold) is reached only through its parent: the parent is
    replaced (kpatch does the same)."""
    out: list[str] = []
    for name in changes.changed:
        f = next(c for c in changes.functions if c.name == name)
        orig = _COLD.sub("", f.original or name)
        if orig not in out:
            out.append(orig)
    return out


def _removed_clones(changes: changes_mod.Changes) -> list[str]:
    """IPA clones the patched build no longer has (gcc kept the ABI this time, or cloned otherwise):
    the old clone still runs for the old callers, which must be able to stand in for it exactly as
    for a changed clone (fixture `refuse-clone-tail-jump`)."""
    return list(dict.fromkeys(_COLD.sub("", n) for n in changes.removed if clones.is_clone(n)))


def _for_clones(clones_: list[str], note: str) -> str:
    """A caller's note: which changed IPA clones it is replaced for, then the note of its own."""
    if not clones_:
        return note
    why = f"replaced because it calls {', '.join(clones_)}, whose calling convention changes"
    return f"{why}: {note}" if note else why


class _Folding:
    """gcc's identical-code folding: other function symbols at a replaced function's place in the
    running binary (vmlinux: the address; a module: section and value). ftrace redirects the place,
    so patching one patches them all: only sound when the fix folds them together again."""

    def __init__(self, u: Unit):
        self.u = u
        self._patched: SymbolIndex | None = None

    def aliases(self, name: str) -> list[str]:
        sym = self.u.resolver.find(name)
        if sym is None:
            return []
        module = self.u.target.is_module
        others = sorted(
            {
                s.name
                for s in self.u.resolver.binary.index.symbols
                if s.value == sym.value
                and s.is_func
                and s.defined
                and s.name
                and s.name != sym.name
                and (not module or s.shndx == sym.shndx)
            }
        )
        return [] if all(self._folded_by_fix(name, o) for o in others) else others

    def _folded_by_fix(self, name: str, other: str) -> bool:
        """Does the fix give `other` the same replacement: one place in the patched object too?"""
        if self._patched is None:
            self._patched = SymbolIndex.open(self.u.patched)
        a, b = self._patched.first(name), self._patched.first(other)
        return a is not None and b is not None and a.is_func and (a.shndx, a.value) == (b.shndx, b.value)


def _refusal_line(f: FunctionRecord) -> str:
    return f"{f.reason}: {f.name} {f.note}" if f.reason else f"{f.name}: {f.note}"


def _first_difference(v) -> str:
    d = v.difference
    return f"+{d.offset:#x}: {d.object_insn} | {d.binary_insn}" if d else v.note


UNFOLLOWED = "kgenv-symlink-not-followed"  # what an extracted symlink points to: nothing


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    """The touched paths as the env's tree has them, for diffapply.check to judge: directories and
    regular files as such; a symlink (the objtree's `source`, say, often absolute) as a link to
    nowhere, because check refuses any path through one and so never needs its target; nothing
    below a symlink and nothing outside dest is written, on any interpreter (no tarfile filter)."""
    links: list[PurePosixPath] = []
    for member in tar.getmembers():
        p = PurePosixPath(member.name)
        kind_ok = member.isfile() or member.islnk() or member.isdir() or member.issym()
        if p.is_absolute() or ".." in p.parts or not p.parts or not kind_ok:
            raise ToolError(f"unexpected entry {member.name!r} in the files read from the env's tree")
        if any(link in p.parents for link in links):
            continue  # reached through a symlink: the link's target, not the tree's own path
        target = dest.joinpath(*p.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        if member.isdir():
            target.mkdir(exist_ok=True)
        elif member.issym():
            os.symlink(UNFOLLOWED, target)
            links.append(p)
        else:
            data = tar.extractfile(member)
            if data is None:
                raise ToolError(f"unexpected entry {member.name!r} in the files read from the env's tree")
            with data, open(target, "xb") as f:  # x: never through a link an earlier entry made
                shutil.copyfileobj(data, f)


def _names(names) -> str:
    names = list(names)
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _source(tu: str) -> str:
    return str(PurePosixPath(tu).with_suffix(".c"))


def _base(name: str) -> str:
    return name.split(".", 1)[0]


def _local_static(u: Unit):
    """(function, static) -> the running kernel's symbol (name.N) of that function-local static:
    the one the original object's code of the function references (the original is proven equal
    to the running binary), if the running object has it; else None."""

    def find(function: str, name: str) -> str | None:
        found = changes_mod.local_statics(u.resolver.obj, function, name)
        return found[0] if len(found) == 1 and u.resolver.position(found[0]) else None

    return find


def _slug(tu: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(PurePosixPath(tu).with_suffix("")))


def _exported(m: Manifest) -> dict[str, str]:
    """Exported symbol -> the object exporting it (vmlinux or a module name), from Module.symvers."""
    out = {}
    for line in m.file("symvers").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            out[parts[1]] = parts[2].rsplit("/", 1)[-1].replace("-", "_")
    return out


def _this_module(u: Unit) -> tuple[str, int] | None:
    """(module, sympos) of a target module's own struct module, for its THIS_MODULE."""
    if not u.target.is_module:
        return None
    found = [s for s in u.resolver.binary.lookup(gensrc.THIS_MODULE_SYMBOL) if s.defined and s.bind != STB_LOCAL]
    return (u.target.objname, 0) if len(found) == 1 else None


def _vmlinux_resolver(m: Manifest, units: list[Unit]) -> Resolver | None:
    """Module fixes may call vmlinux's non-exported globals: resolve those in vmlinux."""
    unit = next((u for u in units if u.target.is_module), None)
    if unit is None:
        return None
    return Resolver(Target(VMLINUX, m.file("vmlinux")), ObjectFile(unit.original, unit.tu))


def build(req: Request, rt: Runtime, progress=QUIET) -> Result:
    return Build(req, rt, progress).run()
