"""The interface check: struct layouts, enumerators, variable types and prototypes a fix changes, read
from the DWARF of two gcc builds of a small TU with a header, as a kernel unit and its headers are."""

import subprocess

import pytest

from kgenv.build import abi, headers
from kgenv.elf import dwarfunits, interface
from kgenv.env.headerusers import Index, User
from kgenv.errors import ToolError

HEADER = r"""
struct sock_like { int state; struct sock_like *next; unsigned int flags : 3; union { long a; int b; } u; };
enum mode { MODE_OFF, MODE_ON };
enum { SK_MAX = 4, SK_MIN = 1 };
typedef struct { int x; } pair_t;
extern int report(struct sock_like *sk, int level);
extern long counter;
static inline int sk_state(const struct sock_like *sk) { return sk->state; }
"""

SOURCE = r"""
#include "inc/sk.h"
static int helper(struct sock_like *sk) { return sk->flags + sk->u.b; }
int handle(struct sock_like *sk, pair_t *p, enum mode m)
{
	if (m == MODE_ON && sk->state < SK_MAX)
		counter++;
	return report(sk, helper(sk)) + sk_state(sk) + p->x;
}
"""


def build(tmp_path, name, header=HEADER, source=SOURCE, debug="-g"):
    d = tmp_path / name
    (d / "inc").mkdir(parents=True, exist_ok=True)
    (d / "inc" / "sk.h").write_text(header)
    (d / "x.c").write_text(source)
    obj = tmp_path / f"{name}.o"
    subprocess.run(["gcc", "-O2", debug, "-c", "x.c", "-o", str(obj)], check=True, cwd=d)
    return obj


def verdict(tmp_path, header=HEADER, source=SOURCE, changed=("inc/sk.h",), **kw):
    return abi.compare("x.c", build(tmp_path, "a"), build(tmp_path, "b", header, source, **kw), set(changed), set())


def test_a_code_only_change_keeps_the_interface(tmp_path):
    v = verdict(tmp_path, source=SOURCE.replace("p->x;", "p->x + 1;"))
    assert v.refusals == [] and v.static_signatures == []


def test_a_member_added_in_the_middle_is_a_layout_change(tmp_path):
    v = verdict(tmp_path, HEADER.replace("int state;", "int state; long lock;"))
    assert any(r.startswith(f"{abi.LAYOUT}: the fix changes struct sock_like (size ") for r in v.refusals), v.refusals


def test_a_bitfield_widened_and_an_anonymous_union_member_are_layout_changes(tmp_path):
    v = verdict(tmp_path, HEADER.replace("flags : 3", "flags : 5"))
    assert [r.split(" (")[0] for r in v.refusals] == [f"{abi.LAYOUT}: the fix changes struct sock_like"]
    v = verdict(tmp_path, HEADER.replace("long a; int b;", "long a; long b;"))
    assert any("struct sock_like" in r for r in v.refusals), v.refusals


def test_anonymous_typedef_and_enumerator_values(tmp_path):
    v = verdict(tmp_path, HEADER.replace("int x; }", "long x; }"))
    assert any("typedef pair_t" in r for r in v.refusals), v.refusals
    v = verdict(tmp_path, HEADER.replace("MODE_OFF, MODE_ON", "MODE_OFF, MODE_IDLE, MODE_ON"))
    assert any(r.startswith(f"{abi.LAYOUT}: the fix changes enumerator MODE_ON (1 -> 2)") for r in v.refusals)
    v = verdict(tmp_path, HEADER.replace("MODE_OFF, MODE_ON", "MODE_OFF, MODE_ON, MODE_IDLE"))
    assert v.refusals == []  # a new value at the end changes no stored one
    v = verdict(tmp_path, HEADER.replace("SK_MAX = 4", "SK_MAX = 8"))  # an anonymous enum's constant
    assert any(r.startswith(f"{abi.LAYOUT}: the fix changes enumerator SK_MAX (4 -> 8)") for r in v.refusals)


def test_prototypes_and_variable_types(tmp_path):
    v = verdict(
        tmp_path,
        HEADER.replace("int level);", "int level, int flags);"),
        SOURCE.replace("helper(sk))", "helper(sk), 0)"),
    )
    assert any(r.startswith(f"{abi.SIGNATURE}: the fix changes the prototype of report") for r in v.refusals)
    v = verdict(tmp_path, HEADER.replace("extern long counter;", "extern int counter;"))
    assert any(r.startswith(f"{abi.LAYOUT}: the fix changes the type of counter") for r in v.refusals)


def test_a_static_prototype_change_is_left_to_the_caller_check(tmp_path):
    source = SOURCE.replace("helper(struct sock_like *sk)", "helper(struct sock_like *sk, int k)")
    source = source.replace("sk->u.b; }", "sk->u.b + k; }").replace("helper(sk))", "helper(sk, 2))")
    v = verdict(tmp_path, source=source)
    assert v.refusals == [] and v.static_signatures == ["helper"]


def test_what_only_the_patched_unit_uses_from_a_changed_header_cannot_be_compared(tmp_path):
    header = HEADER + "struct extra { int a; };\nextern int extra_hook(struct extra *e);\n"
    source = SOURCE.replace("+ p->x;", "+ p->x + extra_hook(0);")
    v = verdict(tmp_path, header, source)
    assert any(
        r.startswith(f"{abi.SIGNATURE}: function extra_hook, declared in the changed inc/sk.h") for r in v.refusals
    )
    assert not verdict(tmp_path, header, source, changed=()).refusals  # an unchanged header: the kernel's


def test_without_debug_info_nothing_can_be_compared(tmp_path):
    v = verdict(tmp_path, debug="-g0")
    assert v.refusals and v.refusals[0].startswith(f"{abi.LAYOUT}: x.c was built without debug info")


def test_a_unit_names_the_headers_it_uses(tmp_path):
    obj = build(tmp_path, "a")
    files = dwarfunits.unit_files(obj.read_bytes())
    assert list(files) == dwarfunits.compile_units(obj.read_bytes()) == ["x.c"] and "inc/sk.h" in files["x.c"]
    unused = build(tmp_path, "b", source='#include "inc/sk.h"\nint f(int x) { return x; }\n')
    assert "inc/sk.h" not in dwarfunits.unit_files(unused.read_bytes())["x.c"]  # included, nothing used


def test_interface_read_of_a_non_elf_is_one_line(tmp_path):
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"\x7fELF" + b"\0" * 60)
    try:
        interface.read(bad)
    except Exception as e:  # noqa: BLE001 - the type is the point
        assert type(e).__name__ == "ToolError" and "\n" not in str(e)
    else:
        raise AssertionError("a broken object was read")


def test_preprocessor_changes_need_named_units():
    before = "#define A 1\nstatic inline int f(void)\n{\n\treturn A;\n}\n#define LONG(x) \\\n\t((x) + 1)\n"
    assert headers.preprocessor_change(before, before.replace("return A;", "return A + 1;")) == 0
    assert headers.preprocessor_change(before, before.replace("#define A 1", "#define A 2")) == 1
    assert headers.preprocessor_change(before, before.replace("((x) + 1)", "((x) + 2)")) == 7  # continued
    assert headers.preprocessor_change(before, "#include <x.h>\n" + before) == 1


def test_reach_collects_users_and_refuses_too_many(tmp_path):
    (tmp_path / "a" / "inc").mkdir(parents=True)
    (tmp_path / "b" / "inc").mkdir(parents=True)
    (tmp_path / "a" / "inc" / "h.h").write_text("static inline int f(void) { return 1; }\n")
    (tmp_path / "b" / "inc" / "h.h").write_text("static inline int f(void) { return 2; }\n")
    idx = Index(
        {"vmlinux": {"k/a.c": ["inc/h.h"], "k/b.c": ["inc/other.h"]}, "mod": {"m/c.c": ["inc/h.h"], "m/d.c": ["?"]}}
    )
    r = headers.reach(idx, ["inc/h.h"], tmp_path / "a", tmp_path / "b")
    assert r.problem == "" and r.counts == {"inc/h.h": 3}
    assert r.users == [User("mod", "m/c.o"), User("mod", "m/d.o"), User("vmlinux", "k/a.o")]  # unreadable: a user
    many = Index({"vmlinux": {f"k/{i}.c": ["inc/h.h"] for i in range(headers.LIMIT + 1)}})
    assert "rebuilds at most" in headers.reach(many, ["inc/h.h"], tmp_path / "a", tmp_path / "b").problem
    unread = Index({"vmlinux": {"k/a.c": ["inc/h.h"], "?": ["?"]}})
    with pytest.raises(ToolError, match="unreadable"):  # a unit whose name is unknown may use any header
        headers.reach(unread, ["inc/h.h"], tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "inc" / "new.h").write_text("#ifndef NEW_H\n#define NEW_H\n#endif\n")
    assert headers.reach(unread, ["inc/new.h"], tmp_path / "a", tmp_path / "b").users == []  # no running user
    for d in "ab":
        (tmp_path / d / "include" / "vdso").mkdir(parents=True)
        (tmp_path / d / "include" / "vdso" / "t.h").write_text(f"static inline int t(void) {{ return {d!r}; }}\n")
    assert "vDSO" in headers.reach(idx, ["include/vdso/t.h"], tmp_path / "a", tmp_path / "b").problem
    (tmp_path / "b" / "inc" / "h.h").write_text("#define F 2\nstatic inline int f(void) { return 1; }\n")
    assert (
        "inc/h.h:1 changes a preprocessor line"
        in headers.reach(idx, ["inc/h.h"], tmp_path / "a", tmp_path / "b").problem
    )


def test_spelling_changes_that_keep_layout_and_calls_are_not_refused(tmp_path):
    header = HEADER + "extern int log_it(char *msg, u32 level);\nstruct blob { int n; unsigned char data[0]; };\n"
    source = "typedef unsigned int u32;\ntypedef unsigned int __u32;\n" + SOURCE  # as an unchanged header has them
    source += "int use(struct blob *b) { return log_it(0, b->n) + b->data[0]; }\n"
    edits = [
        ("char *msg", "const char *msg"),  # a qualifier on a parameter
        ("u32 level", "__u32 level"),  # another name for the same type
        ("data[0];", "data[];"),  # a flexible array spelt the new way
    ]
    for old, new in edits:
        before, after = build(tmp_path, "a", header, source), build(tmp_path, "b", header.replace(old, new), source)
        v = abi.compare("x.c", before, after, {"inc/sk.h"}, set())
        assert v.refusals == [], (old, v.refusals)


def test_unique_id_variables_are_not_compared_by_their_counter(tmp_path):
    source = SOURCE + 'static const char __UNIQUE_ID_firmware2[] __attribute__((used)) = "firmware=a.bin";\n'
    renumbered = source.replace('"firmware=a.bin"', '"firmware=other.bin"')
    v = abi.compare("x.c", build(tmp_path, "a", source=source), build(tmp_path, "b", source=renumbered), set(), set())
    assert v.refusals == []
