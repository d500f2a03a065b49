"""Real-fix corpus: every C file Debian changed between two kernel source versions, built as a livepatch.

    python bench/real_fixes.py [--old 6.1.170-3 --new 6.1.176-1] [--env debian-6.1.0-47-amd64]
                               [--sample N --seed S | --cases A.c,B.c] [-j N] [-o OUTDIR] [--work DIR]
                               [--no-boot] [--prepare-only] [--headers included|none]

The older kernel's env is recorded in bench/envs/ (`KGENV_ENVS`); `kgenv envs restore` brings it back.

1. Fetch both `linux-source-X.Y` .debs through kgenv's archive code (signed index, sha256-checked, cached) and
   unpack only their `.c`/`.h` files (Debian's linux-source has its patches applied).
2. Diff the trees. A changed `.c` file is a case when Debian's config builds it: it is a DWARF compile unit of
   the shipped vmlinux or of a shipped module (`kgenv.audit.sample.units`, the population `kgenv audit` samples;
   cached by build-id). The env's prepared tree holds no per-object `.cmd` files, so the headers a picked TU
   includes come from Kbuild itself: one `docker run --network none` of the env image runs `make -k <tu>.i` for
   every picked case and prints the `.<tu>.i.cmd` files, whose `deps_` list names the headers. The changed ones
   go into the case's diff, and the TU is named as `tus` so kgenv does not refuse with header-change-needs-tu.
3. Write `WORK/<old>_<new>/cases/<name>.diff`, `corpus.json` and a PLAN-<selection>.toml (boot proofs without a
   check script: load/enable/disable/unload), run `kgenv farm run` (cached and resumable: a re-run redoes only
   errors and what did not run), read every job's report.json and classify: built, boot-loaded, boot-failed,
   refused by class, error. Prints a Markdown summary; writes OUTDIR/real_fixes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from hashlib import sha256
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
SOURCE_EXTS = (".c", ".h")
MARK = "##kgenv-cmd## "
NAME_MAX = 40  # a case name becomes the module name livepatch-<name>; kgenv allows 55


@dataclass(frozen=True)
class Changes:
    """Paths (relative to the tree root) of .c/.h files that differ between two source trees."""

    changed: tuple[str, ...]
    added: tuple[str, ...]
    deleted: tuple[str, ...]

    def changed_c(self) -> list[str]:
        return [p for p in self.changed if p.endswith(".c")]

    def changed_h(self) -> list[str]:
        return [p for p in self.changed if p.endswith(".h")]


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # the changed .c file
    tu: str  # its object, fs/proc/cmdline.o
    headers: tuple[str, ...]  # changed headers the TU includes (in the diff)
    diff: str

    def summary(self) -> dict:
        d = asdict(self)
        del d["diff"]
        d["diff_lines"] = self.diff.count("\n")
        return d


# -- sources -------------------------------------------------------------------------------------


def source_tree(version: str, work: Path, line: str = "bookworm", series: str = "6.1") -> Path:
    """WORK/src/<version>: the .c/.h files of linux-source-<series>=<version> (unpacked once)."""
    from kgenv.distro.archive import Archive, extract_deb

    dest = work / "src" / version
    if (dest / ".kgenv-extracted").exists():
        return dest
    archive = Archive(line)
    deb = archive.download(archive.get(f"linux-source-{series}", version))
    debdir = extract_deb(deb, work / "deb" / version, ["./usr/src/*.tar.xz"])
    tarballs = sorted((debdir / "usr" / "src").glob("linux-source-*.tar.xz"))
    if len(tarballs) != 1:
        raise SystemExit(f"{deb}: expected one linux-source tarball, found {len(tarballs)}")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["tar", "-xJf", str(tarballs[0]), "-C", str(dest), "--strip-components=1", "--wildcards", "*.c", "*.h"],
        check=True,
    )
    (dest / ".kgenv-extracted").touch()
    return dest


def _sources(root: Path) -> dict[str, Path]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.endswith(SOURCE_EXTS):
                p = Path(dirpath) / f
                out[p.relative_to(root).as_posix()] = p
    return out


def _same(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return a.read_bytes() == b.read_bytes()


def tree_changes(old: Path, new: Path) -> Changes:
    """The .c/.h files changed, added and deleted from old to new (sorted)."""
    a, b = _sources(old), _sources(new)
    changed = sorted(p for p in a.keys() & b.keys() if not _same(a[p], b[p]))
    return Changes(tuple(changed), tuple(sorted(b.keys() - a.keys())), tuple(sorted(a.keys() - b.keys())))


def file_diff(old: Path, new: Path, rel: str) -> str:
    """A git-style unified diff (--- a/rel, +++ b/rel; --- /dev/null for a new file) of one file; '' when equal."""
    added = not (old / rel).exists()  # a new header: --- /dev/null
    r = subprocess.run(
        [
            "diff",
            "-u",
            "--label",
            "/dev/null" if added else f"a/{rel}",
            "--label",
            f"b/{rel}",
            "/dev/null" if added else str(old / rel),
            str(new / rel),
        ],
        capture_output=True,
        text=True,
        errors="surrogateescape",
    )
    if r.returncode > 1:
        raise SystemExit(f"diff {rel}: {r.stderr.strip()}")
    return r.stdout


# -- which files Debian builds, which headers a TU includes --------------------------------------


def debian_built(m) -> dict[str, str]:
    """source .c -> the shipped object (vmlinux or a module name) whose DWARF names it as a compile unit."""
    from kgenv.audit import sample as audit_sample
    from kgenv.audit.candidate import DockerRunner
    from kgenv.runtime.docker import runtime

    pop = audit_sample.units(str(m.file("vmlinux")), m, DockerRunner(runtime(), m.image.id, m), audit_sample.ALL)
    out = {str(PurePosixPath(tu).with_suffix(".c")): obj for tu, obj in pop.modules.items()}
    out.update({str(PurePosixPath(tu).with_suffix(".c")): "vmlinux" for tu in pop.vmlinux})
    return out


def cmd_path(source: str) -> str:
    """fs/proc/cmdline.c -> fs/proc/.cmdline.i.cmd (relative to the objtree): Kbuild's record of `make x.i`."""
    p = PurePosixPath(source)
    return str(p.parent / f".{p.stem}.i.cmd")


def read_deps_files(m, sources: list[str], jobs: int) -> dict[str, str]:
    """source -> the .cmd text Kbuild writes when it preprocesses the source (one container, no network)."""
    from kgenv.image.tree import make_command

    if not sources:
        return {}
    targets = [str(PurePosixPath(s).with_suffix(".i")) for s in sources]
    make = shlex.join(["make", "-k", *make_command(m.make, m.kernel.objtree, *targets, jobs=jobs)[1:]])
    obj = shlex.quote(m.kernel.objtree or ".")
    cats = " ".join(shlex.quote(cmd_path(s)) for s in sources)
    script = (
        f"{make} >/tmp/make.log 2>&1; cd {obj} && for f in {cats}; do "
        f'[ -f "$f" ] && {{ echo "{MARK}$f"; cat "$f"; }}; done; exit 0'
    )
    r = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-w", m.kernel.srctree, m.image.id, "bash", "-c", script],
        capture_output=True,
        text=True,
        errors="surrogateescape",
    )
    if r.returncode:
        raise SystemExit(f"docker run {m.image.id[:19]}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
    by_cmd = split_cmd_dump(r.stdout)
    return {s: by_cmd[cmd_path(s)] for s in sources if cmd_path(s) in by_cmd}


def split_cmd_dump(text: str) -> dict[str, str]:
    """The container's output (MARK path, then the file) → path → text."""
    out: dict[str, list[str]] = {}
    cur: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(MARK):
            cur = out.setdefault(line[len(MARK) :], [])
        elif cur is not None:
            cur.append(line)
    return {k: "\n".join(v) + "\n" for k, v in out.items()}


def cmd_deps(text: str, srctree: str, objtree: str) -> set[str]:
    """The files a .cmd's deps_<obj> list names, as paths relative to the source tree ($(wildcard) skipped)."""
    m = re.search(r"^deps_\S+ := ?\\?\n((?:.*\\\n)*.*)$", text, re.M)
    if not m:
        return set()
    body = re.sub(r"\$\(wildcard [^)]*\)", " ", m.group(1).replace("\\\n", " "))
    base = PurePosixPath(srctree) / objtree
    out = set()
    for tok in body.split():
        p = PurePosixPath(os.path.normpath(tok if tok.startswith("/") else str(base / tok)))
        if p.is_relative_to(srctree):
            out.add(p.relative_to(srctree).as_posix())
    return out


# -- cases ---------------------------------------------------------------------------------------


def case_name(source: str) -> str:
    """fs/proc/cmdline.c → fs_proc_cmdline; long paths keep their tail and gain a short digest."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", source.removesuffix(".c"))
    if len(name) <= NAME_MAX:
        return name
    return name[-(NAME_MAX - 7) :].lstrip("_") + "_" + sha256(source.encode()).hexdigest()[:6]


def make_cases(changes: Changes, sources: list[str], deps: dict[str, set[str]], diff_of) -> list[Case]:
    """One case per source (a changed .c Debian builds): its diff plus the changed headers its TU includes."""
    headers = set(changes.changed_h())
    cases: list[Case] = []
    used: set[str] = set()
    for source in sorted(sources):
        own = diff_of(source)
        new_inc = {h for h in changes.added if h.endswith(".h") and _includes_new(own, source, h)}
        inc = tuple(sorted((headers & deps.get(source, set())) | new_inc))
        text = own + "".join(diff_of(p) for p in inc)
        tu = str(PurePosixPath(source).with_suffix(".o"))
        name = case_name(source)
        if name in used:  # a-b.c beside a_b.c
            name = name[: NAME_MAX - 7] + "_" + sha256(source.encode()).hexdigest()[:6]
        used.add(name)
        cases.append(Case(name, source, tu, inc, text))
    return cases


def without_changed_headers(case: Case, changes: Changes, diff_of) -> Case:
    """The case with its .c diff and only the headers the fix adds (no changes to existing headers)."""
    added = tuple(h for h in case.headers if h in changes.added)
    return Case(case.name, case.source, case.tu, added, "".join(diff_of(p) for p in (case.source, *added)))


def _includes_new(diff: str, source: str, header: str) -> bool:
    """Whether the diff adds an #include that names the new header (<rdma/iter.h> or "local.h")."""
    for m in re.finditer(r'^\+\s*#\s*include\s*[<"]([^>"]+)[>"]', diff, re.M):
        target = m.group(1)
        here = str(PurePosixPath(source).parent / target)
        if header in (target, here) or header.endswith("/include/" + target) or header == "include/" + target:
            return True
    return False


def sample(sources: list[str], n: int | None, seed: int) -> list[str]:
    """n sources picked by seed (the same list, n and seed give the same pick), sorted; all when n is None."""
    ordered = sorted(sources)
    if n is None or n >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, n))


def write_plan(
    cases: list[Case], plan_dir: Path, plan_name: str, env: str, boot: bool, jobs: int, sub: str = "cases"
) -> Path:
    """SUB/<name>.diff for each case and a PLAN file naming them (every fix expected to build)."""
    (plan_dir / sub).mkdir(parents=True, exist_ok=True)
    lines = [f"kernels = [{json.dumps(env)}]", ""]
    for c in cases:
        f = plan_dir / sub / f"{c.name}.diff"
        if not f.exists() or f.read_text() != c.diff:
            f.write_text(c.diff)
        lines += [f"[fixes.{c.name}]", f'diff = "{sub}/{c.name}.diff"', 'expected = "built"']
        if c.headers:
            lines.append(f"tus = [{json.dumps(c.tu)}]")
        lines.append("")
    lines += ["[options]", f"boot_test = {str(boot).lower()}", "boot_without_check = true", f"jobs = {jobs}", ""]
    plan = plan_dir / plan_name
    plan.write_text("\n".join(lines))
    return plan


# -- results -------------------------------------------------------------------------------------


def refusal_class(reason: str) -> str:
    """The class a refusal reason starts with (`<class>: ...`); 'unclassified' when it names none."""
    m = re.match(r"^([a-z][a-z0-9-]+[a-z0-9]):", reason)
    return m.group(1) if m else "unclassified"


def classify(jobs: list[dict], outdir: Path) -> list[dict]:
    """One record per farm job: outcome class (built, boot-loaded, boot-failed, refused:<class>, error)."""
    rows = []
    for j in jobs:
        report = {}
        if j.get("report") and (outdir / j["report"]).is_file():
            report = json.loads((outdir / j["report"]).read_text())
        boot = report.get("boot") or {}
        outcome, reason = j["outcome"], j["reason"]
        if outcome == "built":
            kind = "boot-loaded" if boot.get("result") == "pass" else "built"
        elif outcome == "refused":
            kind = f"refused:{refusal_class(reason)}"
        else:
            kind = outcome
        rows.append(
            {
                "case": j["fix"],
                "class": kind,
                "reason": reason.splitlines()[0] if reason else "",
                "seconds": j["seconds"],
                "cached": j["cached"],
                "boot_seconds": boot.get("seconds"),
                "stages": report.get("stages", {}),
            }
        )
    return rows


# refusals issue 13 counts as legitimate: what the fix really changes cannot be live patched
# (data, struct layouts and prototypes, freed __init code, assembly, no ftrace site), there is
# nothing to patch, or the fix is not for this tree
LEGITIMATE = {
    "data-change",
    "struct-layout-change",
    "signature-change",
    "init-code",
    "assembly-change",
    "not-traceable",
    "no-code-change",
    "fix-does-not-compile",
    # a tracepoint or static branch of the target module in the replaced code: the kernel writes
    # .klp.rela.<module> only after the loader consumed those sections (kpatch refuses these too)
    "special-section-in-target-module",
}


def bar(rows: list[dict]) -> dict:
    """Issue 13's measures: errors, env-does-not-reproduce, refusals outside the legitimate classes,
    and the share of the other cases (those that change only function code kgenv can replace) that
    built and boot-loaded."""
    kinds = [r["class"].removeprefix("refused:") for r in rows]
    code_only = [k for k in kinds if k not in LEGITIMATE and k != "not-run"]
    loaded = code_only.count("boot-loaded")
    other = {
        r["class"]
        for r, k in zip(rows, kinds, strict=True)
        if r["class"].startswith("refused:") and k not in LEGITIMATE
    }
    return {
        "errors": kinds.count("error"),
        "env_does_not_reproduce": kinds.count("env-does-not-reproduce"),
        "other_refusals": sorted(other),
        "code_only": len(code_only),
        "code_only_boot_loaded": loaded,
        "code_only_rate": round(loaded / len(code_only), 3) if code_only else None,
    }


def summary_markdown(rows: list[dict], meta: dict) -> str:
    counts = Counter(r["class"] for r in rows)
    secs = [r["seconds"] for r in rows if r["class"] != "not-run"]
    out = [
        f"{meta['old']} → {meta['new']} on {meta['env']}: {meta['cases']} cases, {len(rows)} run"
        + (f" (sample {meta['sample']}, seed {meta['seed']})" if meta["sample"] else ""),
        "",
        "| outcome | cases | example reasons |",
        "|---|---|---|",
    ]
    for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        examples = [f"`{r['case']}`: {r['reason'][:160]}" for r in rows if r["class"] == kind and r["reason"]][:2]
        out.append(f"| {kind} | {n} | {'<br>'.join(examples).replace('|', '/')} |")
    if secs:
        out += ["", f"seconds per case: median {statistics.median(secs):.1f}, max {max(secs):.1f} (n={len(secs)})"]
    b = bar(rows)
    out += [
        "",
        f"bar: errors {b['errors']}, env-does-not-reproduce {b['env_does_not_reproduce']}, "
        f"refusals outside the legitimate classes {', '.join(b['other_refusals']) or 'none'}; "
        f"code-only cases boot-loaded {b['code_only_boot_loaded']}/{b['code_only']}"
        + (f" ({b['code_only_rate']:.0%})" if b["code_only_rate"] is not None else ""),
    ]
    return "\n".join(out) + "\n"


# -- main ----------------------------------------------------------------------------------------


def corpus(a: argparse.Namespace, work: Path, plan_dir: Path) -> tuple[list[Case], dict]:
    """The picked cases and the corpus counts (headers are found for the picked cases only)."""
    from kgenv import manifest

    m = manifest.load(a.env)
    old, new = source_tree(a.old, work), source_tree(a.new, work)
    changes_file = plan_dir / "changes.json"
    if changes_file.is_file():
        changes = Changes(**{k: tuple(v) for k, v in json.loads(changes_file.read_text()).items()})
    else:
        changes = tree_changes(old, new)
        changes_file.write_text(json.dumps(asdict(changes), indent=1) + "\n")
    if a.cases:  # named cases (CI's sample): no scan of the shipped DWARF for what Debian builds
        unknown = sorted(set(a.cases) - set(changes.changed_c()))
        if unknown:
            raise SystemExit(f"--cases: not a changed .c file of {a.old} -> {a.new}: {', '.join(unknown)}")
        built = {c: "?" for c in a.cases}
    else:
        built = debian_built(m)
    candidates = [c for c in changes.changed_c() if c in built]
    picked = sample(candidates, a.sample, a.seed)
    known_file = plan_dir / "deps.json"  # source -> the tree files its TU includes (or null: no .cmd)
    known = json.loads(known_file.read_text()) if known_file.is_file() else {}
    todo = [s for s in picked if s not in known]
    if todo:
        print(f"preprocessing {len(todo)} unit(s) for their headers", file=sys.stderr)
        texts = read_deps_files(m, todo, a.jobs)
        for s in todo:
            known[s] = sorted(cmd_deps(texts[s], m.kernel.srctree, m.kernel.objtree)) if s in texts else None
        known_file.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    deps = {s: set(known[s]) for s in picked if known.get(s) is not None}
    cases = make_cases(changes, picked, deps, lambda rel: file_diff(old, new, rel))
    stats = {
        "changed_c": len(changes.changed_c()),
        "changed_h": len(changes.changed_h()),
        "added": len(changes.added),
        "deleted": len(changes.deleted),
        "debian_built_c": len(candidates),
        "built_vmlinux": sum(1 for c in candidates if built[c] == "vmlinux"),
        "built_modules": sum(1 for c in candidates if built[c] != "vmlinux"),
        "picked": len(picked),
        "picked_with_headers": sum(1 for c in cases if c.headers),
        "picked_without_deps": sorted(s for s in picked if s not in deps),
        "headers_in_picked": sorted({h for c in cases for h in c.headers}),
        "objects": {c: built[c] for c in picked},
    }
    if a.headers == "none":  # the .c part of each fix alone, with the new headers it cannot compile without
        cases = [without_changed_headers(c, changes, lambda rel: file_diff(old, new, rel)) for c in cases]
    return cases, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="6.1.170-3")
    ap.add_argument("--new", default="6.1.176-1")
    ap.add_argument("--env", default="debian-6.1.0-47-amd64")
    ap.add_argument("--sample", type=int, default=None)
    ap.add_argument("--cases", type=lambda v: v.split(","), default=None, help="comma-separated changed .c files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("-o", "--outdir", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="plan and sources (default <kgenv cache>/real-fixes)")
    ap.add_argument("--no-boot", action="store_true")
    ap.add_argument(
        "--headers",
        choices=("included", "none"),
        default="included",
        help="included: each case carries the changed headers its TU includes; none: the .c diff alone",
    )
    ap.add_argument("--prepare-only", action="store_true", help="write the cases and the plan, run nothing")
    a = ap.parse_args()
    os.environ.setdefault("KGENV_ENVS", str(REPO / "bench" / "envs"))  # the older kernel's recorded env
    from kgenv.fsutil import cache_dir

    work = (a.work or cache_dir() / "real-fixes").resolve()
    plan_dir = work / f"{a.old}_{a.new}"
    plan_dir.mkdir(parents=True, exist_ok=True)
    cases, stats = corpus(a, work, plan_dir)
    sel = f"sample{a.sample}-seed{a.seed}" if a.sample else "all"
    sel = f"cases-{sha256(','.join(a.cases).encode()).hexdigest()[:8]}" if a.cases else sel
    sel += "-noboot" if a.no_boot else ""
    sel += "-conly" if a.headers == "none" else ""
    (plan_dir / f"corpus-{sel}.json").write_text(
        json.dumps({"stats": stats, "cases": [c.summary() for c in cases]}, indent=1) + "\n"
    )
    sub = "cases" if a.headers == "included" else "cases-conly"
    plan = write_plan(cases, plan_dir, f"PLAN-{sel}.toml", a.env, not a.no_boot, a.jobs, sub)
    print(
        f"{stats['changed_c']} .c changed, {stats['debian_built_c']} Debian-built; "
        f"{len(cases)} picked ({stats['picked_with_headers']} with headers) in {plan}",
        file=sys.stderr,
    )
    if a.prepare_only:
        return 0
    outdir = (a.outdir or plan_dir / f"out-{sel}").resolve()
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "kgenv", "farm", "run", str(plan), "-o", str(outdir), "-j", str(a.jobs)],
        env={**os.environ, "CI": "true"},
        stdout=subprocess.DEVNULL,
        cwd=REPO,
    )
    wall = time.monotonic() - t0
    matrix = outdir / "matrix.json"
    if not matrix.is_file():
        print(f"kgenv farm run exited {r.returncode} without a matrix", file=sys.stderr)
        return 2
    rows = classify(json.loads(matrix.read_text())["jobs"], outdir)
    meta = {
        "old": a.old,
        "new": a.new,
        "env": a.env,
        "cases": stats["debian_built_c"],
        "sample": a.sample,
        "seed": a.seed,
        "boot": not a.no_boot,
        "headers": a.headers,
        "farm_exit": r.returncode,
        "farm_seconds": round(wall, 1),
        **{k: v for k, v in stats.items() if not isinstance(v, list | dict)},
    }
    (outdir / "real_fixes.json").write_text(json.dumps({"meta": meta, "bar": bar(rows), "rows": rows}, indent=1) + "\n")
    print(summary_markdown(rows, meta))
    return 0 if r.returncode in (0, 1) else 2


if __name__ == "__main__":
    sys.exit(main())
