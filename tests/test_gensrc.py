"""gensrc on small synthetic C: facts from the real libclang (host wheel), output compiled by host gcc."""

import difflib
import json
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from kgenv.build import cfacts
from kgenv.build.gensrc import Context, generate
from kgenv.env import kbuildcmd

HEADER = """\
#define __init __attribute__((__section__(".init.text"))) __attribute__((__cold__))
#define __initdata __attribute__((__section__(".init.data")))
#define notrace __attribute__((__no_instrument_function__))
#define noinstr __attribute__((__noinline__)) notrace __attribute__((__section__(".noinstr.text")))
#define DEFINE_LOCK(x) struct lock x = { .v = 1 }
#define EXPORT(sym) extern typeof(sym) sym; \\
	static void *__UNIQUE_ID_addr_##sym __attribute__((used, section(".discard"))) = (void *)&sym; \\
	asm(".pushsection .discard.exp\\n.long 0\\n.popsection")
#define initcall(fn) static int (*__initcall_##fn)(void) __attribute__((used, section(".initcall6.init"))) = fn
#define ONCE(x) ({ static int __already_done; int r = !__already_done; __already_done = 1; r && (x); })
#define DEFINE_WITH_STATE(fn) static int fn##_calls; static int fn(void) { return ++fn##_calls; }
struct lock { int v; };
"""

MINI = """\
// a kernel-like file
#include "mini.h"

static int helper_present(int x);
static int counter;
static DEFINE_LOCK(big_lock);
int global_count = 3;
static int (*hooks[4])(int);
static char (*grid)[8];
static const char *const names[] = { "a", "b" };
static struct { int a; } anon;
static struct pair { int a, b; } pair_var = { 1, 2 };
static int boot_flag __initdata = 1;
static int unused_state;

static int helper_present(int x)
{
	return x + counter;
}

static inline int helper_inlined(int x)
{
	return x * global_count + big_lock.v;
}

int (*pick(int i))(int)
{
	return hooks[i];
}
EXPORT(pick);

int fixed(int a)
{
	if (ONCE(a > 1))
		a++;
	return helper_present(a) + helper_inlined(a) + names[0][0] + (*grid)[1] + pair_var.a + pick(0)(a);
}
EXPORT(fixed);

#ifdef NOT_DEFINED
static int other(void)
{
	return 1;
#else
static int other(void)
{
	return 2;
#endif
}

notrace int untraced(void) { return counter; }
noinstr int entry_code(void) { return counter; }

static int __init setup(void)
{
	return boot_flag;
}
initcall(setup);

int stateful(void)
{
	static int calls;
	static const int table[] = { 1, 2 };
	static void *__UNIQUE_ID_addressable_x __attribute__((used, section(".discard.addressable"))) = &counter;
	static struct lock descriptor __attribute__((section("__dyndbg"))) = { 0 };
	static struct ratelimit_state { int burst; } _rs;
	return ++calls + table[1] + descriptor.v + _rs.burst;
}

int uses_anon(void) { return anon.a; }
int uses_unused(void) { return unused_state; }

DEFINE_WITH_STATE(counted)
int calls_counted(void) { return counted(); }
"""


def parse(tmp_path: Path, text: str, name: str = "mini.c", header: str = HEADER) -> dict:
    """Real cfacts on the host: a Kbuild-style .cmd (objtool tail, make escapes) naming the file."""
    (tmp_path / "mini.h").write_text(header)
    (tmp_path / name).write_text(text)
    cmd = tmp_path / f".{name[:-2]}.o.cmd"
    cmd.write_text(
        f"savedcmd_{name[:-2]}.o := gcc -Wp,-MMD,.x.o.d -nostdinc -I . -O2 -D__KERNEL__ "
        f"-DKBUILD_MODNAME='\"mini\"' -DPRICE='\"$$5\"' -fno-PIE -mno-red-zone -pg "
        f"-c -o {name[:-2]}.o {name}   ; ./tools/objtool/objtool --orc {name[:-2]}.o\n\n"
        f"source_{name[:-2]}.o := {name}\n"
    )
    return cfacts.facts(str(cmd), str(tmp_path))


def compile_c(tmp_path: Path, text: str, *flags: str) -> dict:
    """gcc -c the text; {symbol name: (bind, defined, type)}."""
    src, obj = tmp_path / "gen.c", tmp_path / "gen.o"
    src.write_text(text)
    if not (tmp_path / "mini.h").exists():
        (tmp_path / "mini.h").write_text(HEADER)
    r = subprocess.run(
        ["gcc", "-O2", "-Wall", "-Werror", "-I", str(tmp_path), *flags, "-c", str(src), "-o", str(obj)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    with open(obj, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {
            s.name: (s["st_info"]["bind"], s["st_shndx"] != "SHN_UNDEF", s["st_info"]["type"])
            for s in symtab.iter_symbols()
            if s.name and s["st_info"]["type"] != "STT_FILE"
        }


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    d = tmp_path_factory.mktemp("mini")
    return d, parse(d, MINI)


def everywhere_but(*absent):
    return lambda name, kind: name not in absent


def test_command_parsing(tmp_path):
    cmd = tmp_path / ".a.o.cmd"
    cmd.write_text(
        "cmd_a.o := gcc -Wp,-MMD,a.d -include x.h -I./inc -isystem /s -DX='\"$$(pound)\"' "
        "-DH=$(pound)1 -std=gnu11 -mcmodel=kernel -fno-PIE -g -c -o a.o a.c ; objtool a.o\n"
    )
    argv = kbuildcmd.read_command(cmd)
    assert argv[0] == "gcc" and argv[-1] == "a.c" and "objtool" not in argv
    args, source = cfacts.clang_args(argv)
    assert source == "a.c"
    assert args[:9] == [
        "-include",
        "x.h",
        "-I./inc",
        "-isystem",
        "/s",
        '-DX="$(pound)"',
        "-DH=#1",
        "-std=gnu11",
        "-fno-PIE",
    ]
    assert not any(a.startswith(("-Wp", "-mcmodel", "-g", "-o", "-c")) for a in args)


def test_facts_extents_and_declarators(mini):
    d, facts = mini
    data = (d / "mini.c").read_bytes()
    by = {}
    for x in facts["decls"]:
        by.setdefault(x["name"], []).append(x)

    def text(x):
        return data[x["start"] : x["end"]].decode()

    assert text(by["big_lock"][0]) == "static DEFINE_LOCK(big_lock);" and by["big_lock"][0]["macro"] == "DEFINE_LOCK"
    assert text(by["__initcall_setup"][0]) == "initcall(setup);"
    assert text(next(x for x in by["pick"] if not x["is_definition"])) == "EXPORT(pick);"
    assert by["counter"][0]["is_definition"]  # a tentative definition is one
    assert by["hooks"][0]["extern_decl"] == "extern int (*hooks[4])(int);"
    assert by["grid"][0]["extern_decl"] == "extern char (*grid)[8];"
    assert by["names"][0]["extern_decl"] == "extern const char *const names[2];"
    assert by["pick"][0]["extern_decl"] == "extern int (*pick(int))(int);"
    assert by["boot_flag"][0]["section"] == ".init.data"
    assert by["anon"][0]["extern_decl"] is None and "no name" in by["anon"][0]["extern_problem"]
    assert by["untraced"][0]["notrace"] and by["entry_code"][0]["section"] == ".noinstr.text"
    assert by["setup"][0]["section"] == ".init.text"
    fixed = by["fixed"][0]
    assert set(fixed["refs"]) >= {"helper_present", "helper_inlined", "names", "grid", "pair_var", "pick"}
    assert [s["name"] for s in fixed["local_statics"]] == ["__already_done"]
    proto = by["helper_present"][0]
    assert [data[s:e] for s, e in proto["storage_tokens"]] == [b"static"]
    assert facts["diagnostics"]["errors"] == 0
    assert [w for _, w in facts["directives"]] == ["ifdef", "else", "endif"]


def test_every_extern_declaration_matches_its_definition(mini, tmp_path):
    """gcc rejects a redeclaration with another type: append all extern decls to the file itself."""
    d, facts = mini
    decls = {x["extern_decl"] for x in facts["decls"] if x["extern_decl"] and not x["name"].startswith("__")}
    assert len(decls) > 15
    compile_c(tmp_path, (d / "mini.c").read_text() + "\n".join(sorted(decls)) + "\n", "-Wno-unused")


def test_replaced_function_with_helpers_and_state(mini, tmp_path):
    d, facts = mini
    g = generate((d / "mini.c").read_text(), facts, {"fixed"}, everywhere_but("helper_inlined"))
    assert g.refusals == []
    assert g.replaced == ["fixed"] and g.copied == ["helper_inlined"]
    assert {e.name: (e.kind, e.static) for e in g.externs} == {
        "big_lock": ("variable", True),
        "global_count": ("variable", False),
        "grid": ("variable", True),
        "names": ("variable", True),
        "pair_var": ("variable", True),
        "helper_present": ("function", True),
        "pick": ("function", False),
    }
    assert g.aliases == {"fixed": "livepatch_fixed"}
    assert any("__already_done" in n for n in g.notes)
    syms = compile_c(tmp_path, g.text)
    undefined = {n for n, (_, defined, _) in syms.items() if not defined}
    assert undefined == {"helper_present", "global_count", "big_lock", "names", "grid", "pair_var", "pick"}
    assert syms["livepatch_fixed"] == ("STB_GLOBAL", True, "STT_FUNC")
    assert syms["fixed"][1] and "helper_inlined" in g.text
    defined_data = {n for n, (_, defined, t) in syms.items() if defined and t == "STT_OBJECT"}
    assert defined_data == {"__already_done.0"}  # the once-flag, and no kernel state
    for gone in ("untraced", "setup", "stateful", "counter", "unused_state", "__initcall_setup", "EXPORT("):
        assert gone not in g.text


def test_output_is_the_file_minus_definitions(mini):
    """Reviewable: every added line is a declaration or the alias footer; kept code is untouched."""
    d, facts = mini
    src = (d / "mini.c").read_text()
    g = generate(src, facts, {"fixed"}, everywhere_but("helper_inlined"))
    added = [d[2:] for d in difflib.ndiff(src.splitlines(), g.text.splitlines()) if d.startswith("+ ")]
    for line in added:
        assert line.startswith(("extern ", "/* livepatch:", "struct pair {", "int helper_present(int x);")), line
    assert "int helper_present(int x);" in added  # the static prototype lost its `static`
    assert "struct pair { int a, b; };" in added  # the type survives its variable
    fixed = src[src.index("int fixed(int a)") : src.index("EXPORT(fixed)")]
    assert fixed in g.text


def test_conditional_crossing_a_cut_keeps_its_directives(mini, tmp_path):
    d, facts = mini
    g = generate((d / "mini.c").read_text(), facts, {"fixed"}, everywhere_but("helper_inlined"))
    assert "#ifdef NOT_DEFINED" in g.text and "#else\n#endif" in g.text
    compile_c(tmp_path, g.text)
    assert "return 2" not in g.text


def test_footer_alias_of_a_static_function(tmp_path):
    facts = parse(tmp_path, "static int counter;\nstatic int fn(int a) { return a + counter; }\n")
    g = generate((tmp_path / "mini.c").read_text(), facts, {"fn"}, everywhere_but())
    assert g.text.rstrip().endswith('extern typeof(fn) livepatch_fn __attribute__((alias("fn"), __copy__(fn)));')
    syms = compile_c(tmp_path, g.text)
    assert syms["fn"] == ("STB_LOCAL", True, "STT_FUNC")
    assert syms["livepatch_fn"] == ("STB_GLOBAL", True, "STT_FUNC")
    assert syms["counter"] == ("STB_GLOBAL", False, "STT_NOTYPE")


@pytest.mark.parametrize(
    "keep, present, why",
    [
        ("untraced", (), "untraced is notrace"),
        ("entry_code", (), "entry_code is noinstr"),
        ("setup", (), "setup is __init"),
        ("setup", (), "setup uses boot_flag, which is __initdata"),
        ("stateful", (), "static calls (line"),
        ("uses_anon", (), "anon cannot be declared extern"),
        ("uses_unused", ("unused_state",), "uses static variable unused_state, which the running kernel"),
        ("calls_counted", ("counted",), "also defines counted_calls"),
        ("nowhere", (), "nowhere: no definition"),
    ],
)
def test_refusals(mini, keep, present, why):
    d, facts = mini
    g = generate((d / "mini.c").read_text(), facts, {keep}, everywhere_but(*present))
    assert any(why in r for r in g.refusals), g.refusals


def test_const_local_static_is_copied_with_a_note(mini):
    d, facts = mini
    g = generate((d / "mini.c").read_text(), facts, {"stateful"}, everywhere_but())
    assert any("table" in n and "read-only" in n for n in g.notes)
    assert any("descriptor" in n and "dynamic-debug" in n for n in g.notes)
    assert any("_rs" in n and "ratelimit" in n for n in g.notes)
    assert len(g.refusals) == 1 and g.refusals[0].startswith("copy-of-kernel-state: stateful: static calls (line ")


def test_new_variable_is_the_patch_modules_own(tmp_path):
    old = parse(tmp_path, "static int a;\nint f(void) { return a; }\n")
    src = "static int a;\nstatic int b = 7;\nint c;\nint f(void) { return a + b++ + c++; }\n"
    new = parse(tmp_path, src)
    g = generate(src, new, {"f"}, everywhere_but("b", "c"), original=old)
    assert g.refusals == [] and [e.name for e in g.externs] == ["a"]
    assert "static int b = 7;" in g.text and "int c;" in g.text  # kept as written: defined in the module
    assert any(n.startswith("b: new static variable, the patch module's own: it starts fresh") for n in g.notes)
    assert any(n.startswith("c: new global variable") for n in g.notes)
    syms = compile_c(tmp_path, g.text)
    assert syms["b"][1] and syms["c"][1] and not syms["a"][1]


@pytest.mark.parametrize(
    "decl, why",
    [
        ('static int b __attribute__((section(".data..percpu")));', "placed in section .data..percpu"),
        ("static int b; static int g(void) { return 1; }", ""),  # two groups: b alone is fine
        ("DEFINE_WITH_STATE(b)", "new static variable b_calls: DEFINE_WITH_STATE also defines b"),
    ],
)
def test_new_state_that_is_not_plain_data_is_refused(tmp_path, decl, why):
    old = parse(tmp_path, "int f(void) { return 0; }\n")
    use = "b_calls" if "WITH_STATE" in decl else "b"
    src = f'#include "mini.h"\n{decl}\nint f(void) {{ return {use}; }}\n'
    new = parse(tmp_path, src)
    g = generate(src, new, {"f"}, everywhere_but("b", "b_calls"), original=old)
    if why:
        assert any(r.startswith("new-state: ") and why in r for r in g.refusals), g.refusals
    else:
        assert g.refusals == []


LOCALS = """\
#include "mini.h"
static int other(void) { static int moved; return ++moved; }
int f(int x)
{
\tstatic int count = 5;
\tstatic DEFINE_LOCK(lock);
\tcount += x;
\treturn count + lock.v + other();
}
"""


def bind_to(table):
    return lambda fn, name: table.get((fn, name))


def test_local_static_the_kernel_has_is_bound_to_its_copy(tmp_path):
    facts = parse(tmp_path, LOCALS)
    ctx = Context(
        "vmlinux", False, '"mini"', "kgenv_mini__", bind_to({("f", "count"): "count.1", ("f", "lock"): "lock.0"})
    )
    g = generate(LOCALS, facts, {"f"}, everywhere_but(), original=facts, context=ctx)
    assert g.refusals == []
    assert g.labels["kgenv_mini__f.count"] == "count.1" and g.labels["kgenv_mini__f.lock"] == "lock.0"
    assert '\textern int count __asm__("kgenv_mini__f.count");' in g.text
    assert 'extern struct lock lock __asm__("kgenv_mini__f.lock");' in g.text and "= 5" not in g.text
    assert any("static count (line 5) is the running kernel's count.1" in n for n in g.notes)
    syms = compile_c(tmp_path, g.text)
    # an undefined reference the klp stage turns into .klp.sym.vmlinux.count.1: no second copy
    assert syms["kgenv_mini__f.count"][1] is False and "count" not in syms
    assert syms["kgenv_mini__f.lock"][1] is False


@pytest.mark.parametrize(
    "table, why",
    [
        (
            {("f", "lock"): "lock.0"},
            "static count (line 5) is function-local state the patch must share, but the "
            "original object's code of f does not reference a count.N",
        ),
        ({}, "does not reference a lock.N"),
    ],
)
def test_unbindable_local_static_is_refused(tmp_path, table, why):
    facts = parse(tmp_path, LOCALS)
    ctx = Context("vmlinux", False, '"mini"', "kgenv_mini__", bind_to(table))
    g = generate(LOCALS, facts, {"f"}, everywhere_but(), original=facts, context=ctx)
    assert any(r.startswith("copy-of-kernel-state: f: ") and why in r for r in g.refusals), g.refusals


def test_new_local_static_starts_fresh_unless_it_moved(tmp_path):
    old = parse(tmp_path, "int f(int x) { return x; }\nint h(void) { static int seen; return seen++; }\n")
    src = "int f(int x) { static int calls; return x + calls++; }\nint h(void) { return 0; }\n"
    new = parse(tmp_path, src)
    g = generate(src, new, {"f"}, everywhere_but(), original=old)
    assert g.refusals == [] and "static int calls;" in g.text
    assert any("static calls (line 1) is new state, the patch module's own: it starts fresh" in n for n in g.notes)
    moved = src.replace("calls", "seen")
    new = parse(tmp_path, moved)
    g = generate(moved, new, {"f"}, everywhere_but(), original=old)
    assert any(
        r.startswith("copy-of-kernel-state: f: static seen (line 1) is new in f, but another") for r in g.refusals
    )


def test_new_function_is_copied_without_alias(tmp_path):
    facts = parse(tmp_path, "static int helper(int x) { return x; }\nint f(int a) { return helper(a); }\n")
    g = generate((tmp_path / "mini.c").read_text(), facts, {"f", "helper"}, everywhere_but("helper"))
    assert g.replaced == ["f"] and g.copied == ["helper"] and list(g.aliases) == ["f"]


def test_parse_errors(tmp_path):
    header = HEADER + "static inline int gcc_only(void) { return __builtin_not_in_clang(1); }\n"
    facts = parse(tmp_path, '#include "mini.h"\nint f(void) { return 1; }\n', header=header)
    assert facts["diagnostics"]["errors"] >= 1 and facts["diagnostics"]["main_file_errors"] == 0
    g = generate((tmp_path / "mini.c").read_text(), facts, {"f"}, everywhere_but())
    assert g.refusals == [] and any("in headers" in n for n in g.notes)
    facts = parse(tmp_path, "int f(void) { return undeclared_thing; }\n")
    g = generate((tmp_path / "mini.c").read_text(), facts, {"f"}, everywhere_but())
    assert any("could not parse mini.c" in r for r in g.refusals)


def test_facts_of_another_text_are_rejected(mini):
    d, facts = mini
    with pytest.raises(ValueError, match="another version"):
        generate((d / "mini.c").read_text() + "\n", facts, {"fixed"}, everywhere_but())


def test_cli_writes_json(tmp_path):
    parse(tmp_path, "int f(void) { return 1; }\n")
    out = tmp_path / "facts.json"
    assert cfacts.main(["--cmd", str(tmp_path / ".mini.o.cmd"), "--cwd", str(tmp_path), "--out", str(out)]) == 0
    assert [x["name"] for x in json.loads(out.read_text())["decls"]] == ["f"]
    assert cfacts.main(["--cmd", str(tmp_path / "missing.cmd"), "--cwd", str(tmp_path), "--out", str(out)]) == 2


def test_trace_points_are_the_running_kernels(tmp_path):
    header = HEADER + "#ifdef CREATE_TRACE_POINTS\nint __tracepoint_x = 1;\n#else\nextern int __tracepoint_x;\n#endif\n"
    src = '#define CREATE_TRACE_POINTS\n#include "mini.h"\nint f(void) { return __tracepoint_x; }\n'
    facts = parse(tmp_path, src, header=header)
    g = generate(src, facts, {"f"}, everywhere_but())
    assert "CREATE_TRACE_POINTS" not in g.text and any("tracepoints" in n for n in g.notes)
    (tmp_path / "mini.h").write_text(header)
    syms = compile_c(tmp_path, g.text)
    assert syms["__tracepoint_x"][1] is False


SYSCALLS = (
    HEADER
    + """\
struct meta { const char **t; };
#define SYSCALL_METADATA(sname, nb, ...) \\
	static const char *types_##sname[] = { "int" }; \\
	static struct meta __syscall_meta_##sname = { types_##sname }; \\
	static struct meta *__p_syscall_meta_##sname __attribute__((used, section("__syscalls_metadata"))) = \\
		&__syscall_meta_##sname;
#define SYSCALL_DEFINE1(name, t, a) SYSCALL_METADATA(_##name, 1, t, a) \\
	static inline long __do_sys_##name(t a) __attribute__((__no_instrument_function__)); \\
	long __x64_sys_##name(t a); \\
	long __x64_sys_##name(t a) { return __do_sys_##name(a); } \\
	static inline long __do_sys_##name(t a)
"""
)


def test_syscall_keeps_running_kernels_metadata(tmp_path):
    src = (
        '#include "mini.h"\nstatic int limit;\n\nSYSCALL_DEFINE1(probe, int, x)\n{\n\treturn x < limit;\n}\n\n'
        "SYSCALL_DEFINE1(other, int, x)\n{\n\treturn x;\n}\n"
    )
    facts = parse(tmp_path, src, header=SYSCALLS)
    g = generate(src, facts, {"__x64_sys_probe"}, everywhere_but())
    assert g.refusals == [] and g.replaced == ["__x64_sys_probe"]
    assert any("without its tracing metadata" in n for n in g.notes)
    assert "#undef SYSCALL_METADATA\n#define SYSCALL_METADATA(sname, nb, ...)\nSYSCALL_DEFINE1(probe" in g.text
    assert "SYSCALL_DEFINE1(other" not in g.text
    (tmp_path / "mini.h").write_text(SYSCALLS)
    syms = compile_c(tmp_path, g.text)
    assert not any("syscall_meta" in n or n.startswith("types_") for n in syms)
    assert syms["limit"][1] is False and syms["livepatch___x64_sys_probe"][1]


def test_folded_constants_are_copied_and_new_state_kept(tmp_path):
    src = (
        'static const int limit = 5;\nstatic const char *const names[] = { "a" };\nstatic int live;\n'
        "__attribute__((noreturn)) void die(void);\nstatic __attribute__((noreturn)) void stop(void) { die(); }\n"
        "int f(int x) { if (x < 0) stop(); return x < limit ? names[0][0] : live; }\n"
    )
    facts = parse(tmp_path, src)
    g = generate(src, facts, {"f"}, everywhere_but("limit", "names"))
    assert g.refusals == [] and g.copied == ["limit", "names"]
    assert "static const int limit = 5;" in g.text
    assert "extern void stop(void) __attribute__((__noreturn__));" in g.text
    syms = compile_c(tmp_path, g.text)
    assert syms["live"][1] is False and syms["stop"][1] is False
    old = parse(tmp_path, "int f(int x) { return x; }\n")
    facts = parse(tmp_path, src)
    g = generate(src, facts, {"f"}, everywhere_but("limit", "names", "live"), original=old)
    assert g.refusals == [] and "static int live;" in g.text  # new: the patch module's own


def test_kept_functions_are_never_made_extern(tmp_path):
    """f uses g before g's own definition: both kept, g's static prototype stays as written."""
    src = (
        "static int g(int a);\nint f(int a) { return g(a); }\n"
        "static __attribute__((cold)) int g(int a) { return a + 1; }\n"
    )
    facts = parse(tmp_path, src)
    g = generate(src, facts, {"f", "g"}, everywhere_but())
    assert g.refusals == [] and g.externs == [] and g.replaced == ["f", "g"]
    assert g.text.startswith("static int g(int a);\n")
    syms = compile_c(tmp_path, g.text)  # -Werror: the alias copies `cold`, no -Wmissing-attributes
    assert syms["g"] == ("STB_LOCAL", True, "STT_FUNC") and syms["livepatch_g"][0] == "STB_GLOBAL"


EXPORT_H = """\
#ifndef EXPORT_H
#define EXPORT_H
struct module;
#ifdef MODULE
extern struct module __this_module;
#define THIS_MODULE (&__this_module)
#else
#define THIS_MODULE ((struct module *)0)
#endif
#endif
"""
OWNER = """\
#include <linux/export.h>
#include "mini.h"
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
int take(struct module *m, const char *s);
static int helper(int x) { return take(0, "helper") + x; }
static int state;
int fixed(int x) { return take(THIS_MODULE, pr_fmt("fixed")) + helper(x) + state; }
"""


@pytest.mark.parametrize("is_module", [True, False])
def test_code_means_the_running_object_not_the_patch_module(tmp_path, is_module):
    """THIS_MODULE, KBUILD_MODNAME and the file's statics stand for the object the code runs in; the
    generated file is compiled as patch-module code (-DMODULE, the patch's own KBUILD_MODNAME)."""
    (tmp_path / "linux").mkdir()
    (tmp_path / "linux" / "export.h").write_text(EXPORT_H)
    facts = parse(tmp_path, OWNER)
    ctx = Context("bridge" if is_module else "vmlinux", is_module, '"mini"', "kgenv_net_mini__")
    g = generate((tmp_path / "mini.c").read_text(), facts, {"fixed"}, everywhere_but(), context=ctx)
    assert g.refusals == [] and g.replaced == ["fixed"]
    want = {"kgenv_net_mini__helper": "helper", "kgenv_net_mini__state": "state"}
    if is_module:
        want["kgenv_net_mini____this_module"] = "__this_module"
    assert g.labels == want
    syms = compile_c(tmp_path, g.text, "-DMODULE", '-DKBUILD_MODNAME="livepatch_x"')
    undefined = {n for n, (_, defined, _) in syms.items() if not defined}
    # never the patch module's own __this_module, never a plain name another object may export
    assert undefined == {"take"} | set(want)
    strings = subprocess.run(["strings", str(tmp_path / "gen.o")], capture_output=True, text=True).stdout
    assert "mini: fixed" in strings and "livepatch_x" not in strings


POINTERS = """\
#include "mini.h"
int call(int (*f)(int));
static int outside(int x) { return x; }
#define TWIN(n) static int n##_a(int x) { return x + 1; } \\
	int n##_b(int x) { return n##_a(x) + call(x ? n##_a : outside); }
TWIN(t)
int direct(int x) { return t_a(x) + call(outside); }
"""


@pytest.mark.parametrize(
    "keep, absent, refused, noted",
    [
        ({"t_b"}, (), True, False),  # t_a: a macro twin compiled in, although the running kernel has it
        ({"t_b"}, ("t_a",), False, True),  # t_a exists only in the patch module
        ({"direct"}, (), False, False),  # a call of t_a and the running kernel's outside: nothing to say
        ({"t_b", "t_a"}, (), True, False),  # t_a replaced: its address would be the patch's copy
    ],
)
def test_function_pointers_lead_into_the_running_kernel(tmp_path, keep, absent, refused, noted):
    facts = parse(tmp_path, POINTERS)
    by = {d["name"]: d for d in facts["decls"] if d["is_definition"]}
    assert by["t_b"]["addr_refs"] == ["t_a", "outside"] and by["direct"]["addr_refs"] == ["outside"]
    g = generate((tmp_path / "mini.c").read_text(), facts, keep, everywhere_but(*absent))
    assert any(r.startswith("pointer-into-patch: t_b takes the address of t_a") for r in g.refusals) == refused
    assert any("takes the address of t_a" in n for n in g.notes) == noted
    assert g.pinned_by == (["t_a"] if noted else [])


REBIND = """\
#include "mini.h"
int call(int (*f)(int));
static int helper(int x);
int user(int x) { return call(helper) + helper(x); }
static int helper(int x)
{
	return x + 2;
}
"""


def test_the_address_of_a_replaced_function_is_the_running_kernels(tmp_path):
    """user passes helper's address: it must be the running kernel's helper; the replacement is
    defined under another name and reached through the livepatch redirect."""
    facts = parse(tmp_path, REBIND)
    ctx = Context("vmlinux", False, '"mini"', "kgenv_mini__")
    g = generate((tmp_path / "mini.c").read_text(), facts, {"user", "helper"}, everywhere_but(), context=ctx)
    assert g.refusals == [] and g.replaced == ["user", "helper"]
    assert "static int kgenv_new_helper(int x)\n{\n\treturn x + 2;" in g.text
    assert "\nint helper(int x);\n" in g.text  # the static prototype now declares the running one
    assert any("user takes the address of helper" in n for n in g.notes) and g.pinned_by == []
    syms = compile_c(tmp_path, g.text, "-fno-pic")
    undefined = {n for n, (_, defined, _) in syms.items() if not defined}
    assert undefined == {"call", "kgenv_mini__helper"}  # helper: the running kernel's, by label
    assert syms["livepatch_helper"][:2] == ("STB_GLOBAL", True) and syms["kgenv_new_helper"][1]


def test_a_new_out_of_line_copy_of_a_header_inline_is_compiled_in_again(mini):
    """A fix's new jhash() call makes gcc emit the header's inline out of line: new in the patched
    object, defined in no line of the file; the generated file's includes define it again."""
    d, facts = mini
    g = generate((d / "mini.c").read_text(), facts, {"fixed", "jhash"}, everywhere_but("jhash"))
    assert g.refusals == [] and any(n.startswith("jhash: a new out-of-line copy") for n in g.notes)


def test_local_statics_sharing_one_declaration_are_refused_not_crashed(tmp_path):
    src = "int f(int x)\n{\n\tstatic int a, b;\n\ta += x;\n\tb -= x;\n\treturn a + b;\n}\n"
    facts = parse(tmp_path, src)
    ctx = Context("vmlinux", False, '"mini"', "kgenv_mini__", bind_to({("f", "a"): "a.0", ("f", "b"): "b.1"}))
    g = generate(src, facts, {"f"}, everywhere_but(), original=facts, context=ctx)
    assert any(r.startswith("copy-of-kernel-state: static a (line 3) is not written as a plain") for r in g.refusals)
