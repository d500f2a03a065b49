"""clones: the callers a changed IPA clone makes a fix replace, read from a gcc-12 build of a small TU."""

import re
import subprocess

import pytest
from synthetic_objects import FLAGS

from kgenv.build import clones, pipeline
from kgenv.build.changes import NEW, REMOVED, Changes, FunctionChange
from kgenv.verify.mapping import ObjectFile

# pick has a struct parameter it reads one field of (IPA-SRA: pick.isra.N); outer also gets a
# constant argument folded in (outer.constprop.N.isra.N) and calls pick: a clone calling the clone
BASE = r"""
struct big { int a, b, c, d; };
extern void report(int) __attribute__((cold));
extern int sink(int);
static __attribute__((noinline)) int pick(struct big *p) { return p->b * 7 + sink(p->b); }
int via_a(struct big *p) { return pick(p) + 1; }
int via_b(struct big *p) { return pick(p) * 3; }
static __attribute__((noinline)) int outer(struct big *p, int k) { return pick(p) * k + sink(k); }
int top(struct big *p) { return outer(p, 3) + 2; }
int top2(struct big *p) { return outer(p, 3) + 5; }
__attribute__((section(".init.text"))) int setup(struct big *p) { return pick(p) + 9; }
"""
TAIL = "int tail(struct big *p) { return pick(p); }\n"
COLD_CALLER = "int rare(struct big *p, int x) { if (x > 100) { report(x); return pick(p) + 4; } return x; }\n"
# gcc never stores a clone's address itself (kpatch saw none either); an assembler reference stands in
STORED = 'asm(".pushsection .data.hooks,\\"aw\\"\\n .quad {clone}\\n .popsection");\n'
LEA = 'int addr(struct big *p) { void *f; asm("lea {clone}(%%rip), %0" : "=r"(f)); return sink((long)f) + 1; }\n'


def build(tmp_path, src: str) -> ObjectFile:
    (tmp_path / "x.c").write_text(src)
    obj = tmp_path / "x.o"
    subprocess.run(["gcc", *FLAGS, "-c", "x.c", "-o", str(obj)], check=True, cwd=tmp_path)
    return ObjectFile(obj, "kernel/x.o")


def clone_of(obj: ObjectFile, base: str) -> str:
    names = [s.name for s in obj.functions() if s.name.startswith(base + ".")]
    assert len(names) == 1, names
    return names[0]


def with_clone(tmp_path, extra: str) -> tuple[ObjectFile, str]:
    """BASE plus `extra`, whose {clone} is pick's clone name as gcc spells it in BASE."""
    name = clone_of(build(tmp_path, BASE), "pick")
    return build(tmp_path, BASE + extra.replace("{clone}", name)), name


def test_is_clone():
    assert clones.is_clone("pick.isra.0") and clones.is_clone("outer.constprop.0.isra.0")
    assert clones.is_clone("pick.part.3.cold") and clones.is_clone("x.constprop.1.cold.2")
    assert not clones.is_clone("pick") and not clones.is_clone("pick.cold")
    assert not clones.is_clone("foo.localalias") and not clones.is_clone("foo.lto_priv.0")


def test_callers_replace_the_clone_through_a_clone_caller(tmp_path):
    obj = build(tmp_path, BASE)
    pick, outer = clone_of(obj, "pick"), clone_of(obj, "outer")
    assert re.fullmatch(r"pick\.isra\.\d+", pick) and ".constprop." in outer
    found = clones.callers(obj, [pick], module=False)
    assert found.refused == {}
    # outer's clone is not replaced itself (its ABI is gcc's): its callers stand for it
    assert sorted(found.replace) == ["top", "top2", "via_a", "via_b"]
    assert all(v == [pick] for v in found.replace.values())
    assert found.freed == {"setup": [pick]}
    notes = found.notes()
    assert any(n.startswith(f"{pick} changed its calling convention") and "callers via_a, via_b" in n for n in notes)
    assert any(n.startswith("setup calls ") and "freed" in n for n in notes)


def test_outer_clone_alone_needs_only_its_callers(tmp_path):
    obj = build(tmp_path, BASE)
    outer = clone_of(obj, "outer")
    found = clones.callers(obj, [outer], module=False)
    assert found.replace == {"top": [outer], "top2": [outer]} and not found.freed


def test_module_init_caller_is_refused(tmp_path):
    obj = build(tmp_path, BASE)
    pick = clone_of(obj, "pick")
    found = clones.callers(obj, [pick], module=True)
    assert list(found.refused) == [pick] and not found.replace
    assert "setup calls" in found.refused[pick] and ".init.text" in found.refused[pick]


@pytest.mark.parametrize(
    "extra, phrase",
    [
        (TAIL, "tail tail-jumps to"),
        (COLD_CALLER, "rare.cold calls"),
        (STORED, "its address is stored in .data.hooks"),
        (LEA, "addr takes the address of"),
    ],
)
def test_unsafe_references_refuse_the_clone(tmp_path, extra, phrase):
    obj, pick = with_clone(tmp_path, extra)
    found = clones.callers(obj, [pick], module=False)
    assert phrase in found.refused[pick], found.refused
    assert not found.replace


def test_a_clone_of_a_refused_caller_refuses_the_changed_clone(tmp_path):
    """The tail jump is one level up: top tail-jumps to outer's clone, which calls pick's."""
    obj = build(tmp_path, BASE.replace("return outer(p, 3) + 2;", "return outer(p, 3);"))
    pick = clone_of(obj, "pick")
    found = clones.callers(obj, [pick], module=False)
    assert "top tail-jumps to outer." in found.refused[pick]


def test_missing_global_and_uncalled_functions_are_refused(tmp_path):
    obj = build(tmp_path, BASE + "__attribute__((used, noinline)) static int lonely(int x) { return sink(x) + 1; }\n")
    refused = clones.callers(obj, ["gone.isra.0", "via_a", "lonely"], False).refused
    assert "not defined in the object" in refused["gone.isra.0"]
    assert "global symbol" in refused["via_a"]
    # only __mcount_loc (a position record) names it: no caller to stand in
    assert refused["lonely"] == "no function of the object calls lonely"


def test_a_clone_the_patched_build_lost_is_checked_like_a_changed_one():
    """gcc kept the C ABI in the patched build: the old clone still runs for the old callers."""
    ch = Changes(
        "x.o",
        (
            FunctionChange("pick.isra.0", REMOVED),
            FunctionChange("pick.isra.0.cold", REMOVED),
            FunctionChange("gone", REMOVED),
            FunctionChange("pick", NEW),
        ),
        (),
    )
    assert pipeline._removed_clones(ch) == ["pick.isra.0"]
