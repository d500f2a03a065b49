"""bench/real_fixes.py's corpus making on tiny synthetic trees: diffs, header attachment, sampling."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kgenv.errors import UserError
from kgenv.farm import plan as farm_plan

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("real_fixes", ROOT / "bench" / "real_fixes.py")
assert _spec and _spec.loader
rf = importlib.util.module_from_spec(_spec)
sys.modules["real_fixes"] = rf
_spec.loader.exec_module(rf)

SRCTREE = "/build/reproducible-path/linux-6.1.170"
OBJTREE = "debian/build/build_amd64_none_amd64"


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture
def trees(tmp_path):
    same = {"include/linux/same.h": "int same;\n", "fs/a/Makefile": "obj-y += a.o\n"}
    old = tree(
        tmp_path / "old",
        {
            **same,
            "fs/a/a.c": '#include "a.h"\nint a(void)\n{\n\treturn 1;\n}\n',
            "fs/a/a.h": "#define A 1\n",
            "include/linux/shared.h": "#define S 1\n",
            "drivers/x/notbuilt.c": "int nb(void) { return 0; }\n",
            "drivers/x/gone.c": "int gone;\n",
            "fs/a/b.c": "int b(void) { return 2; }\n",
        },
    )
    new = tree(
        tmp_path / "new",
        {
            **same,
            "fs/a/a.c": '#include "a.h"\nint a(void)\n{\n\treturn 2;\n}\n',
            "fs/a/a.h": "#define A 2\n",
            "include/linux/shared.h": "#define S 2\n",
            "drivers/x/notbuilt.c": "int nb(void) { return 1; }\n",
            "drivers/x/new.c": "int n;\n",
            "fs/a/b.c": "int b(void) { return 3; }\n",
        },
    )
    return old, new


def cmd(obj: str, deps: list[str]) -> str:
    lines = [f"cmd_{obj} := gcc-12 -c -o {obj} x.c", f"deps_{obj} := \\"]
    lines += [f"  {d} \\" for d in deps]
    lines += ["", f"{obj}: $(deps_{obj})", f"$(deps_{obj}):"]
    return "\n".join(lines) + "\n"


def test_tree_changes_sees_only_c_and_h(trees):
    ch = rf.tree_changes(*trees)
    assert ch.changed == ("drivers/x/notbuilt.c", "fs/a/a.c", "fs/a/a.h", "fs/a/b.c", "include/linux/shared.h")
    assert ch.added == ("drivers/x/new.c",) and ch.deleted == ("drivers/x/gone.c",)
    assert ch.changed_c() == ["drivers/x/notbuilt.c", "fs/a/a.c", "fs/a/b.c"]


def test_file_diff_is_git_style_and_applies(trees, tmp_path):
    old, new = trees
    d = rf.file_diff(old, new, "fs/a/a.c")
    assert d.startswith("--- a/fs/a/a.c\n+++ b/fs/a/a.c\n@@ ")
    assert "-\treturn 1;\n+\treturn 2;\n" in d
    assert rf.file_diff(old, new, "include/linux/same.h") == ""


def test_cmd_deps_normalises_absolute_relative_and_skips_wildcards():
    text = cmd(
        "fs/a/a.o",
        [
            f"{SRCTREE}/fs/a/a.c",
            f"{SRCTREE}/include/linux/shared.h",
            "  $(wildcard include/config/FOO) \\\n  $(wildcard include/config/BAR)",
            "../../../fs/a/a.h",  # relative to the objtree
            "include/generated/autoconf.h",  # in the objtree
            "/usr/lib/gcc/x86_64-linux-gnu/12/include/stddef.h",  # outside the tree
        ],
    )
    deps = rf.cmd_deps(text, SRCTREE, OBJTREE)
    assert deps == {"fs/a/a.c", "include/linux/shared.h", "fs/a/a.h", f"{OBJTREE}/include/generated/autoconf.h"}
    assert rf.cmd_deps("cmd_x.o := gcc\n", SRCTREE, OBJTREE) == set()


def test_split_cmd_dump_and_cmd_path():
    assert rf.cmd_path("fs/proc/cmdline.c") == "fs/proc/.cmdline.i.cmd"
    dump = f"{rf.MARK}fs/a/.a.o.cmd\ncmd_fs/a/a.o := gcc\n{rf.MARK}fs/a/.b.o.cmd\ncmd_fs/a/b.o := gcc\nx\n"
    assert rf.split_cmd_dump(dump) == {
        "fs/a/.a.o.cmd": "cmd_fs/a/a.o := gcc\n",
        "fs/a/.b.o.cmd": "cmd_fs/a/b.o := gcc\nx\n",
    }


def test_cases_only_for_built_files_with_their_changed_headers(trees):
    old, new = trees
    ch = rf.tree_changes(old, new)
    deps = {
        "fs/a/a.c": rf.cmd_deps(
            cmd("fs/a/a.o", [f"{SRCTREE}/fs/a/a.c", "../../../fs/a/a.h", f"{SRCTREE}/include/linux/same.h"]),
            SRCTREE,
            OBJTREE,
        ),
        "fs/a/b.c": {"fs/a/b.c"},
    }  # drivers/x/notbuilt.c is in no shipped object's DWARF: Debian does not build it
    built = [c for c in ch.changed_c() if c in {"fs/a/a.c", "fs/a/b.c"}]
    cases = rf.make_cases(ch, built, deps, lambda rel: rf.file_diff(old, new, rel))
    assert [(c.name, c.tu, c.headers) for c in cases] == [
        ("fs_a_a", "fs/a/a.o", ("fs/a/a.h",)),
        ("fs_a_b", "fs/a/b.o", ()),
    ]
    a = cases[0].diff
    assert a.index("--- a/fs/a/a.c") < a.index("--- a/fs/a/a.h") and "+#define A 2" in a
    assert "shared.h" not in a  # changed, but a.c does not include it


def test_case_names_fit_a_module_name():
    assert rf.case_name("fs/proc/cmdline.c") == "fs_proc_cmdline"
    long = rf.case_name("drivers/net/ethernet/mellanox/mlx5/core/steering/dr_action.c")
    assert len(long) <= rf.NAME_MAX and re.fullmatch(r".*dr_action_[0-9a-f]{6}", long)
    assert farm_plan.FIX_NAME_RE.match(long)
    assert long != rf.case_name("drivers/net/ethernet/mellanox/mlx5/core/steering/dr_actiom.c")


def test_sampling_is_deterministic_and_sorted():
    sources = [f"f/c{i:02d}.c" for i in range(30)]
    a = rf.sample(sources, 7, seed=0)
    assert (
        a
        == rf.sample(list(reversed(sources)), 7, seed=0)
        == ["f/c01.c", "f/c08.c", "f/c12.c", "f/c13.c", "f/c16.c", "f/c24.c", "f/c27.c"]
    )  # pinned: a Python or code change that reshuffles the corpus sample shows here
    assert a == sorted(a) and len(a) == 7 and a != rf.sample(sources, 7, seed=1)
    assert rf.sample(sources, None, 0) == sources == rf.sample(sources, 99, 0)


def test_plan_loads_with_tus_and_boot_without_check(trees, tmp_path):
    old, new = trees
    cases = [
        rf.Case("fs_a_a", "fs/a/a.c", "fs/a/a.o", ("fs/a/a.h",), rf.file_diff(old, new, "fs/a/a.c")),
        rf.Case("fs_a_b", "fs/a/b.c", "fs/a/b.o", (), rf.file_diff(old, new, "fs/a/b.c")),
    ]
    p = rf.write_plan(cases, tmp_path / "plan", "PLAN.toml", "debian-6.1.0-47-amd64", True, 2)
    pl = farm_plan.load(p)
    by = {f.name: f for f in pl.fixes}
    assert by["fs_a_a"].tus == ("fs/a/a.o",) and by["fs_a_b"].tus == () and by["fs_a_b"].check is None
    assert pl.options.boot_test and pl.options.boot_without_check and pl.kernels == ("debian-6.1.0-47-amd64",)
    p.write_text(p.read_text().replace("boot_without_check = true\n", ""))
    with pytest.raises(UserError, match="check is required"):
        farm_plan.load(p)


def test_refusal_class_and_summary():
    assert rf.refusal_class("data-change: fs/a/a.c: the fix changes data (x)") == "data-change"
    assert rf.refusal_class("fix.diff: changes build file(s)") == "unclassified"
    assert rf.refusal_class("the fix changes nothing") == "unclassified"
    rows = [
        {"case": "a", "class": "boot-loaded", "reason": "", "seconds": 10.0},
        {"case": "b", "class": "refused:init-code", "reason": "init-code: f is __init", "seconds": 4.0},
        {"case": "c", "class": "boot-loaded", "reason": "", "seconds": 30.0},
    ]
    meta = {"old": "1", "new": "2", "env": "e", "cases": 9, "sample": 3, "seed": 0}
    md = rf.summary_markdown(rows, meta)
    assert "| boot-loaded | 2 |" in md and "`b`: init-code: f is __init" in md
    assert "median 10.0, max 30.0 (n=3)" in md
    assert "code-only cases boot-loaded 2/2 (100%)" in md


def test_the_bar_counts_code_only_cases_and_wrong_refusals():
    kinds = ["boot-loaded", "boot-failed", "refused:ipa-clone", "refused:data-change", "error", "not-run"]
    b = rf.bar([{"class": k} for k in kinds])
    assert b["errors"] == 1 and b["env_does_not_reproduce"] == 0
    assert b["other_refusals"] == ["refused:ipa-clone"]  # a class issue 13 does not accept
    assert (b["code_only"], b["code_only_boot_loaded"], b["code_only_rate"]) == (4, 1, 0.25)


def test_colliding_case_names_get_a_digest(tmp_path):
    old = tree(tmp_path / "o", {"d/a-b.c": "int x;\n", "d/a_b.c": "int y;\n"})
    new = tree(tmp_path / "n", {"d/a-b.c": "int x2;\n", "d/a_b.c": "int y2;\n"})
    ch = rf.tree_changes(old, new)
    cases = rf.make_cases(ch, ["d/a-b.c", "d/a_b.c"], {}, lambda rel: rf.file_diff(old, new, rel))
    assert cases[0].name == "d_a_b" and re.fullmatch(r"d_a_b_[0-9a-f]{6}", cases[1].name)


def test_a_new_header_the_fix_includes_comes_along(tmp_path):
    old = tree(tmp_path / "o", {"drivers/m/mr.c": "int a;\n", "include/rdma/other.h": "\n"})
    new = tree(
        tmp_path / "n",
        {
            "drivers/m/mr.c": '#include <rdma/iter.h>\n#include "local.h"\nint a;\n',
            "include/rdma/iter.h": "#define ITER 1\n",
            "drivers/m/local.h": "#define L 1\n",
            "include/rdma/unrelated.h": "\n",
            "include/rdma/other.h": "\n",
        },
    )
    ch = rf.tree_changes(old, new)
    assert ch.added == ("drivers/m/local.h", "include/rdma/iter.h", "include/rdma/unrelated.h")
    (case,) = rf.make_cases(ch, ["drivers/m/mr.c"], {}, lambda rel: rf.file_diff(old, new, rel))
    assert case.headers == ("drivers/m/local.h", "include/rdma/iter.h")
    assert "--- /dev/null\n+++ b/include/rdma/iter.h\n@@ -0,0 +1 @@\n+#define ITER 1\n" in case.diff
    # --headers none keeps the new headers (the .c cannot compile without them), drops changed ones
    with_changed = rf.Case(case.name, case.source, case.tu, (*case.headers, "include/rdma/other.h"), "")
    bare = rf.without_changed_headers(with_changed, ch, lambda rel: rf.file_diff(old, new, rel))
    assert bare.headers == case.headers and bare.diff == case.diff


# The CI sample of the corpus: real Debian fixes of 6.1.170-3 -> 6.1.176-1 built against the older
# kernel's recorded env (bench/envs), restored into the engine when missing; each case as the bench
# defines it, in its `.c`-only form (the .c diff with only the headers it newly adds: the headers of this
# update change struct layouts every case would be refused for), boot-loaded when built.
CI_CASES = {  # changed .c -> the outcome class it ends in (bench/real_fixes.md, the `.c`-only run)
    "kernel/regset.c": "boot-loaded",  # vmlinux
    "net/ipv4/netfilter/arpt_mangle.c": "boot-loaded",  # a module
    "net/netfilter/xt_cpu.c": "refused:no-code-change",  # smp_processor_id() -> raw_: the same code
}


@pytest.mark.archive
@pytest.mark.docker
@pytest.mark.qemu
def test_a_corpus_sample_builds_or_is_refused_legitimately(tmp_path, docker_rt):
    from kgenv import manifest

    envs = ROOT / "bench" / "envs"
    m = manifest.parse((envs / "debian-6.1.0-47-amd64.toml").read_text(), "bench/envs")
    environ = {**os.environ, "KGENV_ENVS": str(envs), "CI": "true"}
    if not docker_rt.image_id(m.image.id):
        subprocess.run([sys.executable, "-m", "kgenv", "envs", "restore", m.name], env=environ, check=True, cwd=ROOT)
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "real_fixes.py"), "--headers", "none", "--cases", ",".join(CI_CASES)]
        + ["-o", str(out)],
        env=environ,
        check=True,
        cwd=ROOT,
    )
    result = json.loads((out / "real_fixes.json").read_text())
    bar = result["bar"]
    assert (bar["errors"], bar["env_does_not_reproduce"], bar["other_refusals"]) == (0, 0, []), result["rows"]
    got = {r["case"]: r["class"] for r in result["rows"]}
    assert got == {rf.case_name(c): kind for c, kind in CI_CASES.items()}, result["rows"]
