"""changes: per-function and per-variable comparison of two gcc-12 builds of one small TU."""

import subprocess

import pytest
from synthetic_objects import FLAGS, SPECIAL

from kgenv.build import changes, diffapply
from kgenv.build.changes import CHANGED, NEW, REMOVED, UNCHANGED
from kgenv.elf.reader import open_elf
from kgenv.elf.symbols import SymbolIndex
from kgenv.errors import UserError
from kgenv.verify.mapping import ObjectFile

# A kernel-shaped TU: statics, an inline helper, an IPA-CP clone, a WARN-style __bug_table entry.
BASE = r"""
extern int printk(const char *fmt, ...);
extern void report_line(int line);
struct big { int a, b, c, d; };
static int counter;
int limit = 10;
static const int table[4] = {1, 2, 3, 4};

#define WARN_FLAGS(flags) asm volatile("1: ud2\n"                                  \
        ".pushsection __bug_table,\"aw\"\n"                                        \
        "2: .long 1b - 2b\n .long %c0 - 2b\n .word %c1\n .word %c2\n"              \
        ".org 2b + 12\n .popsection" :: "i"(__FILE__), "i"(__LINE__), "i"(flags))

static __attribute__((noinline)) int helper(int x) { return x * 3 + table[x & 3]; }
static inline int tiny(int x) { return x + 1; }
static __attribute__((noinline)) int scale(int x, int k) { return x * k + counter; }
/*ANCHOR*/
int user_a(int x) { counter++; return helper(x) + tiny(x); }
int user_b(int x) { if (x > limit) WARN_FLAGS(0x100); return scale(x, 7) + tiny(x * 2); }
int user_c(int x) { printk("%s: value %d\n", __func__, x); return scale(x + 1, 7); }
int plain(int x) { return x ^ 0x55; }
"""


# ask gcc for one IPA-CP clone per constant, as a bigger kernel function would get
CP_CLONES = ["-fipa-cp-clone", "--param", "ipa-cp-eval-threshold=1"]


def build(tmp_path, name, src, *extra):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "x.c").write_text(src)  # one __FILE__ for both builds, as a kernel TU has
    obj = tmp_path / f"{name}.o"
    subprocess.run(["gcc", *FLAGS, *extra, "-c", "x.c", "-o", str(obj)], check=True, cwd=d)
    return obj


def diff(tmp_path, *edits, src=BASE, flags=()):
    patched = src
    for old, new in edits:
        assert old in patched, old
        patched = patched.replace(old, new)
    return changes.compare(
        build(tmp_path, "orig", src, *flags), build(tmp_path, "patched", patched, *flags), "kernel/x.o"
    )


def section_bytes(tmp_path, name, section):
    elf = open_elf(tmp_path / f"{name}.o")
    return bytes(elf.section_data(elf.section(section)))


def statuses(ch):
    return {f.name: f.status for f in ch.functions}


def not_unchanged(ch):
    return {f.name: f.status for f in ch.functions if f.status != UNCHANGED}


def data(ch):
    return {d.name: d.status for d in ch.data if d.status != UNCHANGED}


def test_identical_builds_change_nothing(tmp_path):
    ch = diff(tmp_path)
    assert set(statuses(ch).values()) == {UNCHANGED}
    assert {"helper", "scale.constprop.0", "user_a", "user_b", "user_c", "plain"} <= set(statuses(ch))
    assert not ch.data_changed and ch.changed == ch.new == ch.removed == []


def test_comment_only_change_moves_lines_but_changes_nothing(tmp_path):
    ch = diff(tmp_path, ("/*ANCHOR*/", "/* a comment\n spanning\n three lines */"))
    assert not_unchanged(ch) == {} and data(ch) == {}
    # the WARN entry's line field did move: the bug-table rule is what kept user_b unchanged
    assert section_bytes(tmp_path, "orig", "__bug_table") != section_bytes(tmp_path, "patched", "__bug_table")


def test_changed_static_function(tmp_path):
    ch = diff(tmp_path, ("x * 3 + table", "x * 5 + table"))
    assert not_unchanged(ch) == {"helper": CHANGED}
    assert ch.changed == ["helper"] and data(ch) == {}


def test_changed_static_inline_changes_its_callers(tmp_path):
    ch = diff(tmp_path, ("return x + 1; }", "return x + 2; }"))
    assert not_unchanged(ch) == {"user_a": CHANGED, "user_b": CHANGED}


def test_new_function_and_its_caller(tmp_path):
    ch = diff(
        tmp_path,
        (
            "int plain(int x) { return x ^ 0x55; }",
            "static __attribute__((noinline)) int fresh(int x) { return x - 9; }\n"
            "int plain(int x) { return fresh(x) ^ 0x55; }",
        ),
    )
    assert not_unchanged(ch) == {"fresh": NEW, "plain": CHANGED}
    assert ch.new == ["fresh"]


def test_removed_function(tmp_path):
    ch = diff(tmp_path, ("int plain(int x) { return x ^ 0x55; }", ""))
    assert not_unchanged(ch) == {"plain": REMOVED} and ch.removed == ["plain"]


def test_changed_constprop_clone(tmp_path):
    ch = diff(tmp_path, ("x * k + counter", "x * k - counter"))
    assert not_unchanged(ch) == {"scale.constprop.0": CHANGED}


def test_isra_clone_change(tmp_path):
    src = BASE.replace(
        "/*ANCHOR*/",
        "static __attribute__((noinline)) int pick(struct big *p) "
        "{ return p->b * 7; }\nint via(struct big *p) { return pick(p); }",
    )
    orig = statuses(diff(tmp_path, src=src))
    clone = next(n for n in orig if n.startswith("pick."))
    assert ".isra." in clone
    ch = diff(tmp_path, ("p->b * 7", "p->b * 9"), src=src)
    assert not_unchanged(ch) == {clone: CHANGED}


def test_renumbered_clone_is_unchanged(tmp_path):
    orig = build(tmp_path, "orig", BASE)
    renamed = tmp_path / "renamed.o"
    subprocess.run(
        [
            "objcopy",
            "--redefine-sym",
            "scale.constprop.0=scale.constprop.3",
            "--rename-section",
            ".text.scale.constprop.0=.text.scale.constprop.3",
            str(orig),
            str(renamed),
        ],
        check=True,
    )
    ch = changes.compare(orig, renamed)
    assert not_unchanged(ch) == {}
    (fc,) = [f for f in ch.functions if f.name == "scale.constprop.3"]
    assert fc.original == "scale.constprop.0" and fc.status == UNCHANGED


TWO_CLONES = BASE.replace("/*ANCHOR*/", "int other(int x) { return scale(x, 9) + 1; }")


def test_swapped_clone_numbers_pair_by_content(tmp_path):
    orig = build(tmp_path, "orig", TWO_CLONES, *CP_CLONES)
    clones = sorted(n for n in statuses(changes.compare(orig, orig)) if n.startswith("scale."))
    assert len(clones) == 2, clones
    swap = tmp_path / "swap.txt"
    swap.write_text(f"{clones[0]} {clones[1]}\n{clones[1]} {clones[0]}\n")
    swapped = tmp_path / "swapped.o"
    subprocess.run(["objcopy", f"--redefine-syms={swap}", str(orig), str(swapped)], check=True)
    ch = changes.compare(orig, swapped)
    assert not_unchanged(ch) == {}
    assert {f.original for f in ch.functions if f.name in clones} == set(clones)


def test_caller_switching_between_clones_is_changed(tmp_path):
    ch = diff(tmp_path, ("return scale(x, 9) + 1;", "return scale(x, 7) + 1;"), src=TWO_CLONES, flags=CP_CLONES)
    assert ch.changed == ["other"], not_unchanged(ch)


def test_new_global_variable_is_a_data_change(tmp_path):
    ch = diff(tmp_path, ("int limit = 10;", "int limit = 10;\nint extra = 3;"))
    assert data(ch) == {"extra": NEW} and ch.data_changed
    assert not_unchanged(ch) == {}


def test_changed_initialiser_is_a_data_change(tmp_path):
    ch = diff(tmp_path, ("int limit = 10;", "int limit = 11;"))
    assert data(ch) == {"limit": CHANGED} and not_unchanged(ch) == {}
    ch = diff(tmp_path, ("{1, 2, 3, 4}", "{1, 2, 3, 5}"))
    assert data(ch) == {"table": CHANGED}


def test_static_variable_added_in_a_function(tmp_path):
    ch = diff(
        tmp_path,
        ("int plain(int x) { return x ^ 0x55; }", "int plain(int x) { static int seen; seen++; return x ^ 0x55; }"),
    )
    assert data(ch) == {"seen.0": NEW} and not_unchanged(ch) == {"plain": CHANGED}


def test_string_literal_change_changes_the_user_only(tmp_path):
    ch = diff(tmp_path, ("value %d", "Value %d"))
    assert not_unchanged(ch) == {"user_c": CHANGED} and data(ch) == {}


def test_new_literal_renumbering_labels_changes_the_user_only(tmp_path):
    # gas keeps the .LC label of user_b's WARN file string (a PC-relative reference into a
    # mergeable section); a literal added to user_a renumbers it (.LC0 -> .LC1): not a change
    ch = diff(tmp_path, ("{ counter++;", '{ printk("new %d\\n", x); counter++;'))
    labels = [
        {s.name for s in SymbolIndex(open_elf(tmp_path / f"{n}.o")).symbols if s.name.startswith(".LC")}
        for n in ("orig", "patched")
    ]
    assert labels == [{".LC0"}, {".LC1"}]
    assert not_unchanged(ch) == {"user_a": CHANGED} and data(ch) == {}


def test_warn_flags_change_is_seen_though_code_is_equal(tmp_path):
    ch = diff(tmp_path, ("WARN_FLAGS(0x100)", "WARN_FLAGS(0x101)"))
    assert not_unchanged(ch) == {"user_b": CHANGED}
    assert section_bytes(tmp_path, "orig", ".text.user_b") == section_bytes(tmp_path, "patched", ".text.user_b")


def test_unknown_bug_table_layout_keeps_the_line(tmp_path):
    src = BASE.replace(".org 2b + 12", ".org 2b + 16")  # not the kernel's layout: line not proven
    ch = diff(tmp_path, ("/*ANCHOR*/", "\n\n"), src=src)
    assert not_unchanged(ch) == {"user_b": CHANGED}


def test_line_immediates_in_code_are_not_ignored(tmp_path):
    src = BASE.replace("int plain(int x) {", "int plain(int x) { report_line(__LINE__);")
    ch = diff(tmp_path, ("/*ANCHOR*/", "\n\n"), src=src)
    assert not_unchanged(ch) == {"plain": CHANGED}


def test_to_dict_is_two_levels_with_stable_keys(tmp_path):
    ch = diff(tmp_path, ("int limit = 10;", "int limit = 12;"), ("x * 3 + table", "x * 4 + table"))
    d = ch.to_dict()
    assert list(d) == ["tu", "functions", "data"] and d["tu"] == "kernel/x.o"
    assert d["functions"] and all(
        list(f) == ["name", "status", "original", "section", "size", "binding"] for f in d["functions"]
    )
    assert {"name": "limit", "status": CHANGED, "section": ".data.limit", "size": 4, "binding": "global"} in d["data"]
    assert all(not isinstance(v, (dict, list)) for f in d["functions"] + d["data"] for v in f.values())


def test_base_name():
    assert changes.base_name("foo.isra.0") == "foo.isra"
    assert changes.base_name("foo.constprop.1.isra.0.cold") == "foo.constprop.isra.cold"
    assert changes.base_name("foo.part.12") == "foo.part"
    assert changes.base_name("__func__.3", local_object=True) == "__func__"
    assert changes.base_name("count.3") == "count.3"


def test_unusable_objects_are_user_errors(tmp_path):
    good = build(tmp_path, "orig", BASE)
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"\x7fELF" + bytes(60))
    exe = tmp_path / "exe"
    subprocess.run(
        ["gcc", "-nostdlib", "-static", "-Wl,--unresolved-symbols=ignore-all", "-o", str(exe), str(good)],
        check=True,
        capture_output=True,
    )
    for bad, what in ((junk, "junk.o"), (exe, "not a relocatable object"), (tmp_path / "none.o", "cannot read")):
        with pytest.raises(UserError, match=what):
            changes.compare(good, bad)


# -- special-section payloads: entries pointing into a function are part of its fingerprint ------


def special_diff(tmp_path, *edits):
    return diff(tmp_path, *edits, src=SPECIAL)


def same_code(tmp_path, fn):
    name = f".text.{fn}"
    assert section_bytes(tmp_path, "orig", name) == section_bytes(tmp_path, "patched", name), fn


def test_special_sections_identical_builds_change_nothing(tmp_path):
    ch = special_diff(tmp_path)
    assert {"jl_user", "alt_user", "alt_call", "ex_user", "sc_user"} <= set(statuses(ch))
    assert not_unchanged(ch) == {}
    for sec in ("__jump_table", ".altinstructions", ".altinstr_replacement", "__ex_table", ".static_call_sites"):
        assert open_elf(tmp_path / "orig.o").section(sec) is not None, sec


@pytest.mark.parametrize(
    "edit, function, code_equal",
    [
        (("STATIC_BRANCH(&key_a)", "STATIC_BRANCH(&key_b)"), "jl_user", True),  # static-branch key
        (('"lfence", 18)', '"lfence", 17)'), "alt_user", True),  # alternative's feature bit
        (('"lfence", 18)', '"mfence", 18)'), "alt_user", True),  # alternative's replacement bytes
        (('"call fallback_a"', '"call fallback_b"'), "alt_call", True),  # replacement's callee
        (("EX_LOAD(v, p, 2b, 3)", "EX_LOAD(v, p, 3b, 3)"), "ex_user", True),  # exception fixup target
        (("EX_LOAD(v, p, 2b, 3)", "EX_LOAD(v, p, 2b, 4)"), "ex_user", False),  # exception fixup type
        (("STATIC_CALL_SITE(__SCK__hook_a)", "STATIC_CALL_SITE(__SCK__hook_b)"), "sc_user", True),  # static call
    ],
)
def test_a_special_section_payload_is_a_change(tmp_path, edit, function, code_equal):
    """Only the special-section entry pointing into the function differs: still `changed`."""
    ch = special_diff(tmp_path, edit)
    assert not_unchanged(ch) == {function: CHANGED}
    if code_equal:
        same_code(tmp_path, function)


def test_static_branch_direction_is_a_change(tmp_path):
    # the key field's low bit is the branch's default direction (static_branch_likely vs unlikely)
    src = SPECIAL.replace('"i"(0) :: yes', '"i"(branch) :: yes').replace(
        "#define STATIC_BRANCH(key)",
        "#define STATIC_BRANCH(key) STATIC_BRANCH_DIR(key, 0)\n#define STATIC_BRANCH_DIR(key, branch)",
    )
    ch = diff(tmp_path, ("STATIC_BRANCH(&key_a)", "STATIC_BRANCH_DIR(&key_a, 1)"), src=src)
    assert not_unchanged(ch) == {"jl_user": CHANGED}
    same_code(tmp_path, "jl_user")


def test_new_alternative_elsewhere_moves_replacements_but_changes_nothing_else(tmp_path):
    # the new function's replacement comes first in .altinstr_replacement: the others' move
    ch = special_diff(
        tmp_path, ("void alt_user(void)", 'void alt_new(void) { ALTERNATIVE("nop", "pause", 5); }\nvoid alt_user(void)')
    )
    assert not_unchanged(ch) == {"alt_new": NEW}


def test_special_entries_survive_moved_lines(tmp_path):
    ch = special_diff(
        tmp_path,
        ("/*ANCHOR*/", "int later(int x) { return x + 3; }"),
        ("struct static_key {", "\n\nstruct static_key {"),
    )
    assert not_unchanged(ch) == {"later": NEW}


def test_bug_table_line_only_change_is_unchanged(tmp_path):
    # the WARN entry differs in its line field alone (issue 13: a line move is no change)
    ch = diff(tmp_path, ("/*ANCHOR*/", "\n"))
    assert not_unchanged(ch) == {}
    old, new = (section_bytes(tmp_path, n, "__bug_table") for n in ("orig", "patched"))
    assert [i for i in range(len(old)) if old[i] != new[i]] and all(
        changes.BUG_LINE <= i % changes.BUG_ENTRY < changes.BUG_FLAGS for i in range(len(old)) if old[i] != new[i]
    )


def test_static_cpu_has_feature_byte_is_a_change(tmp_path):
    # bit 18 -> 26: the same bit mask in the same .altinstr_aux bytes, another byte of the caps
    # (a relocation addend) and another feature in .altinstructions: only the payload differs
    ch = special_diff(tmp_path, ("STATIC_CPU_HAS(18)", "STATIC_CPU_HAS(26)"))
    assert not_unchanged(ch) == {"cpu_user": CHANGED}
    same_code(tmp_path, "cpu_user")
    assert section_bytes(tmp_path, "orig", ".altinstr_aux") == section_bytes(tmp_path, "patched", ".altinstr_aux")


def test_new_static_cpu_has_elsewhere_changes_nothing_else(tmp_path):
    # the new bit test comes first in .altinstr_aux: cpu_user's jumps there at another offset
    ch = special_diff(
        tmp_path,
        ("int cpu_user(int x)", "int cpu_new(int x) { return STATIC_CPU_HAS(5) ? x : 0; }\nint cpu_user(int x)"),
    )
    assert not_unchanged(ch) == {"cpu_new": NEW}


# -- dynamic-debug descriptors and __UNIQUE_ID (issue 13: renumbered or moved, not changed) ------

DDEBUG = r"""
extern int printk(const char *fmt, ...);
struct _ddebug {
        const char *modname, *function, *filename, *format;
        unsigned int lineno:18, class_id:6, flags:8;
        struct { int enabled; void *entries; } key;
} __attribute__((aligned(8)));
#define PASTE_(a, b) a##b
#define PASTE(a, b) PASTE_(a, b)
#define UNIQUE_ID(prefix) PASTE(PASTE(__UNIQUE_ID_, prefix), __COUNTER__)
#define PR_DEBUG_(id, fmt, ...) do {                                                    \
        static struct _ddebug __attribute__((section("__dyndbg"), used)) id =          \
                { "x", __func__, __FILE__, fmt, __LINE__, 63, 0 };                      \
        if (id.flags) printk(fmt, ##__VA_ARGS__);                                       \
} while (0)
#define PR_DEBUG(fmt, ...) PR_DEBUG_(UNIQUE_ID(ddebug), fmt, ##__VA_ARGS__)
static int unique_user(int x) { int UNIQUE_ID(tmp) = x; return x; }
int first(int x) { PR_DEBUG("first %d\n", x); return x + 1; }
/*ANCHOR*/
int second(int x) { PR_DEBUG("second %d\n", x); return x + 2; }
int third(int x) { PR_DEBUG("third %d\n", x); PR_DEBUG("third again\n"); return x + unique_user(x); }
"""


def ddebug_diff(tmp_path, *edits):
    return diff(tmp_path, *edits, src=DDEBUG)


def descriptor_names(tmp_path, name):
    index = SymbolIndex(open_elf(tmp_path / f"{name}.o"))
    return sorted(s.name for s in index.symbols if s.name.startswith("__UNIQUE_ID_ddebug"))


def test_descriptor_renumbered_by_an_earlier_macro_use_is_unchanged(tmp_path):
    # kpatch's case: a min() (its __UNIQUE_ID locals) added to one function renumbers every
    # later __UNIQUE_ID; here a new pr_debug in first() renumbers and moves the others' descriptors
    ch = ddebug_diff(tmp_path, ("return x + 1; }", 'PR_DEBUG("added\\n"); return x + 1; }'))
    before, after = descriptor_names(tmp_path, "orig"), descriptor_names(tmp_path, "patched")
    assert len(after) == len(before) + 1 and set(before) - set(after)  # renumbered, not just one more
    assert not_unchanged(ch) == {"first": CHANGED} and data(ch) == {}


def test_blank_lines_move_descriptor_lines_but_change_nothing(tmp_path):
    ch = ddebug_diff(tmp_path, ("/*ANCHOR*/", "\n\n\n"))
    assert not_unchanged(ch) == {} and data(ch) == {}
    assert section_bytes(tmp_path, "orig", "__dyndbg") != section_bytes(tmp_path, "patched", "__dyndbg")


def test_descriptor_format_change_changes_its_user(tmp_path):
    ch = ddebug_diff(tmp_path, ('"second %d\\n"', '"second: %d\\n"'))
    assert not_unchanged(ch) == {"second": CHANGED} and data(ch) == {}


def test_unique_id_counter_is_not_part_of_the_name():
    assert changes.base_name("__UNIQUE_ID_ddebug412") == "__UNIQUE_ID_ddebug"
    assert changes.base_name("__UNIQUE_ID_ddebug412.7", local_object=True) == "__UNIQUE_ID_ddebug"
    assert changes.base_name("__UNIQUE_ID_license267") == "__UNIQUE_ID_license"
    assert changes.base_name("UNIQUE_ID_x12") == "UNIQUE_ID_x12"


# -- __LINE__ arguments that only moved with the lines (issue 13: a blank line is no change) ---------

LINES = r"""
extern int _printk(const char *fmt, ...);
extern void report_line(int line);
/*ANCHOR*/
int noisy(int x) { if (x) _printk("%s (%d): oops\n", __FILE__, __LINE__); return x; }
int other(int x) { if (x) report_line(__LINE__); return x; }
"""


def hunk(old_start, new_start, *lines):
    """A diffapply hunk from its start lines and its body lines."""
    olds = sum(1 for line in lines if not line.startswith("+"))
    news = sum(1 for line in lines if not line.startswith("-"))
    return diffapply.Hunk(old_start, olds, new_start, news, "@@", tuple(lines))


def test_line_map_follows_the_hunks():
    m = changes.line_map([hunk(3, 3, " a", "+new", " b"), hunk(10, 11, " c", "-gone", "-gone2", " d")])
    assert [m(n) for n in (1, 3, 4, 5, 9, 10, 11, 12, 13, 20)] == [1, 3, 5, 6, 10, 11, None, None, 12, 19]


def test_line_argument_moved_by_the_diff_is_no_change(tmp_path):
    orig = build(tmp_path, "orig", LINES)
    patched = build(tmp_path, "patched", LINES.replace("/*ANCHOR*/", "/*ANCHOR*/\n"))
    moved = changes.line_map([hunk(4, 4, " /*ANCHOR*/", "+")])
    assert statuses(changes.compare(orig, patched))["noisy"] == CHANGED  # without the diff's lines
    ch = changes.compare(orig, patched, lines=moved)
    # noisy's __LINE__ feeds _printk: it moved with the lines; report_line is not known to take one
    assert not_unchanged(ch) == {"other": CHANGED}
    # a shift other than the diff's is a change (a constant the fix edited, not a moved line)
    ch = changes.compare(orig, patched, lines=lambda line: line + 2)
    assert not_unchanged(ch) == {"noisy": CHANGED, "other": CHANGED}


def test_local_statics_are_the_ones_the_function_references(tmp_path):
    # two functions with a `static int count` each (gcc numbers them count.N): told apart by value
    src = (
        "int f(int x) { static int count = 11; count += x; return count; }\n"
        "int g(int x) { static int count = 22; static int other; count -= x; other++; return count; }\n"
        "int h(int x) { return x; }\n"
    )
    obj = ObjectFile(build(tmp_path, "orig", src))

    def value(name):
        sym = next(s for s in obj.index.symbols if s.name == name)
        return int.from_bytes(bytes(obj.index.code(sym)), "little")

    f, g = changes.local_statics(obj, "f", "count"), changes.local_statics(obj, "g", "count")
    assert len(f) == len(g) == 1 and [value(f[0]), value(g[0])] == [11, 22]
    (other,) = changes.local_statics(obj, "g", "other")
    assert other.startswith("other.") and value(other) == 0
    assert changes.local_statics(obj, "h", "count") == [] and changes.local_statics(obj, "f", "other") == []


def test_a_static_gone_and_a_new_one_is_a_lost_state(tmp_path):
    """A renamed static: a fresh copy in the patch module would not hold the running kernel's value."""
    ch = diff(tmp_path, ("static int counter;", "static int hits;"), ("counter++", "hits++"), ("+ counter;", "+ hits;"))
    assert sorted((d.name, d.status) for d in changes.refused_data(ch)) == [("counter", REMOVED), ("hits", NEW)]
    fresh = diff(
        tmp_path, ("static int counter;", "static int counter;\nstatic int hits;"), ("counter++", "counter++, hits++")
    )
    assert changes.refused_data(fresh) == []  # only new: the module's own
