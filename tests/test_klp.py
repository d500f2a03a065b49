"""klp: livepatch symbol/relocation rewriting, checked with pyelftools and readelf as the oracle."""

import os
import re
import subprocess

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from kgenv.elf import klp
from kgenv.errors import UserError

SRC = """
extern int hidden_func(int);
extern int other_func(int);
extern int hidden_var;
int user(int x) { return hidden_func(x) + other_func(x) + hidden_var; }
int second(int x) { return hidden_func(x * 3) + 1; }
void *table[] = { (void *)hidden_func, (void *)&hidden_var, (void *)other_func };
"""
FLAGS = ["-O2", "-fno-PIE", "-mcmodel=kernel", "-fno-asynchronous-unwind-tables"]
CONVERT = {"hidden_func": ("vmlinux", 0), "hidden_var": ("vmlinux", 2)}


def compile_obj(tmp_path, *extra, name="a.o"):
    src = tmp_path / "a.c"
    src.write_text(SRC)
    obj = tmp_path / name
    subprocess.run(["gcc", *FLAGS, *extra, "-c", str(src), "-o", str(obj)], check=True)
    return obj


def relocs(path):
    """(rela section, target section, offset, type, symbol name, addend) rows."""
    out = []
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection):
                target = elf.get_section(sec["sh_info"]).name
                for r in sec.iter_relocations():
                    sym = symtab.get_symbol(r["r_info_sym"])
                    name = sym.name or elf.get_section(sym["st_shndx"]).name
                    out.append((sec.name, target, r["r_offset"], r["r_info_type"], name, r["r_addend"]))
    return out


def sections(path):
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return {s.name: (dict(s.header), s.data()) for s in elf.iter_sections()}


def readelf(path):
    r = subprocess.run(["readelf", "-W", "-S", "-s", "-r", str(path)], check=True, capture_output=True, text=True)
    assert r.stderr == ""  # readelf warns about any inconsistency it notices
    return r.stdout


def test_symbols_become_livepatch_symbols(tmp_path):
    obj = compile_obj(tmp_path)
    out = tmp_path / "out.o"
    res = klp.convert(obj, CONVERT, out)
    assert res.symbols == (".klp.sym.vmlinux.hidden_func,0", ".klp.sym.vmlinux.hidden_var,2")
    with open(out, "rb") as f:
        syms = {s.name: s for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()}
    for name in res.symbols:
        assert syms[name]["st_shndx"] == klp.SHN_LIVEPATCH == 0xFF20
        assert syms[name]["st_info"]["bind"] == "STB_GLOBAL"
    assert "hidden_func" not in syms and syms["other_func"]["st_shndx"] == "SHN_UNDEF"
    text = readelf(out)
    assert re.search(r"GLOBAL DEFAULT +OS \[0xff20\] \.klp\.sym\.vmlinux\.hidden_func,0$", text, re.M)
    assert re.search(r"OS \[0xff20\] \.klp\.sym\.vmlinux\.hidden_var,2$", text, re.M)


def test_a_label_becomes_the_running_objects_name(tmp_path):
    """A TU's static reached under a per-TU assembler name binds to the real name in its object."""
    obj = compile_obj(tmp_path)
    res = klp.convert(obj, {"hidden_var": ("bridge", 2, "br_state"), "hidden_func": ("vmlinux", 0)}, tmp_path / "o")
    assert res.symbols == (".klp.sym.bridge.br_state,2", ".klp.sym.vmlinux.hidden_func,0")


def test_relocations_move_to_klp_sections(tmp_path):
    obj = compile_obj(tmp_path)
    before = relocs(obj)
    out = tmp_path / "out.o"
    res = klp.convert(obj, CONVERT, out)
    after = relocs(out)
    assert sorted(res.sections) == [".klp.rela.vmlinux..data", ".klp.rela.vmlinux..text"]
    moved = [r for r in after if r[4].startswith(".klp.sym.")]
    assert moved and all(r[0].startswith(".klp.rela.vmlinux.") for r in moved)
    assert all(r[0] == ".klp.rela.vmlinux." + r[1] for r in moved)
    assert res.moved == len(moved) == sum(r[4] in CONVERT for r in before)
    # everything else untouched, in its original section and order
    assert [r for r in after if not r[4].startswith(".klp.")] == [r for r in before if r[4] not in CONVERT]
    # the moved entries keep offset, type and addend
    strip = [(r[1], r[2], r[3], r[5]) for r in moved]
    assert sorted(strip) == sorted((r[1], r[2], r[3], r[5]) for r in before if r[4] in CONVERT)


def test_klp_section_headers(tmp_path):
    out = tmp_path / "out.o"
    klp.convert(compile_obj(tmp_path), CONVERT, out)
    with open(out, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_index(".symtab")
        for name in (".klp.rela.vmlinux..text", ".klp.rela.vmlinux..data"):
            sec = elf.get_section_by_name(name)
            assert sec["sh_type"] == "SHT_RELA" and sec["sh_entsize"] == 24
            assert sec["sh_flags"] & klp.SHF_RELA_LIVEPATCH and sec["sh_flags"] & 0x2
            assert sec["sh_link"] == symtab
            assert elf.get_section(sec["sh_info"]).name == name[len(".klp.rela.vmlinux.") :]
    text = readelf(out)
    assert re.search(r"\] \.klp\.rela\.vmlinux\.\.text +RELA .* AIo +\d+ +1 +8$", text, re.M)
    assert "Relocation section '.klp.rela.vmlinux..data'" in text


def test_function_sections_give_one_klp_section_per_function(tmp_path):
    obj = compile_obj(tmp_path, "-ffunction-sections", "-fdata-sections")
    out = tmp_path / "out.o"
    res = klp.convert(obj, {"hidden_func": ("vmlinux", 1), "other_func": ("ext4", 0)}, out)
    assert sorted(res.sections) == [
        ".klp.rela.ext4..data.table",
        ".klp.rela.ext4..text.user",
        ".klp.rela.vmlinux..data.table",
        ".klp.rela.vmlinux..text.second",
        ".klp.rela.vmlinux..text.user",
    ]
    rows = relocs(out)
    assert {r[0] for r in rows if r[4] == ".klp.sym.ext4.other_func,0"} == {
        ".klp.rela.ext4..text.user",
        ".klp.rela.ext4..data.table",
    }
    assert [r[4] for r in rows if r[0] == ".rela.text.user"] == ["hidden_var"]
    text = readelf(out)
    assert "Relocation section '.klp.rela.vmlinux..text.second'" in text


def test_ld_still_accepts_the_output(tmp_path):
    out = tmp_path / "out.o"
    klp.convert(compile_obj(tmp_path, "-ffunction-sections"), CONVERT, out)
    linked = tmp_path / "linked.o"
    subprocess.run(["ld", "-r", str(out), "-o", str(linked)], check=True, capture_output=True)
    assert linked.stat().st_size > 0


def test_round_trip_without_conversions_keeps_every_section(tmp_path):
    obj = compile_obj(tmp_path, "-ffunction-sections")
    out = tmp_path / "same.o"
    res = klp.convert(obj, {}, out)
    assert res.symbols == () and res.sections == () and res.moved == 0
    a, b = sections(obj), sections(out)
    assert list(a) == list(b)
    for name, (hdr, data) in a.items():
        assert data == b[name][1], name
        assert {k: v for k, v in hdr.items() if k != "sh_offset"} == {
            k: v for k, v in b[name][0].items() if k != "sh_offset"
        }, name
    assert relocs(obj) == relocs(out)


def test_untouched_sections_keep_their_bytes(tmp_path):
    obj = compile_obj(tmp_path)
    out = tmp_path / "out.o"
    klp.convert(obj, CONVERT, out)
    a, b = sections(obj), sections(out)
    rewritten = {".strtab", ".shstrtab", ".symtab", ".rela.text", ".rela.data"}
    for name, (_hdr, data) in a.items():
        if name not in rewritten:
            assert b[name][1] == data, name


def test_in_place_rewrite_keeps_mode(tmp_path):
    obj = compile_obj(tmp_path)
    os.chmod(obj, 0o640)
    res = klp.convert(obj, {"hidden_var": ("vmlinux", 0)})
    assert res.path == str(obj) and (os.stat(obj).st_mode & 0o777) == 0o640
    assert ".klp.sym.vmlinux.hidden_var,0" in readelf(obj)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".klp-")] == []


@pytest.mark.parametrize(
    "mapping, what",
    [
        ({"nope": ("vmlinux", 0)}, "no such symbol to convert: nope"),
        ({"user": ("vmlinux", 0)}, "symbol user is defined here"),
        ({"hidden_var": ("vm.linux", 0)}, "bad livepatch object name"),
        ({"hidden_var": ("vmlinux", -1)}, "bad sympos"),
        ({"a,b": ("vmlinux", 0)}, "cannot become a livepatch symbol"),
        ({"hidden_var": ("vmlinux", 0, "x,1")}, "cannot become a livepatch symbol"),
    ],
)
def test_bad_mappings(tmp_path, mapping, what):
    with pytest.raises(UserError, match=what):
        klp.convert(compile_obj(tmp_path), mapping, tmp_path / "out.o")
    assert not (tmp_path / "out.o").exists()


def test_garbled_input(tmp_path):
    obj = compile_obj(tmp_path)
    data = obj.read_bytes()
    cases = {
        "empty": b"",
        "text": b"not an elf file at all",
        "truncated": data[:100],
        "no-section-table": data[:40] + (1 << 40).to_bytes(8, "little") + data[48:],
    }
    exe = tmp_path / "exe"
    subprocess.run(
        ["gcc", "-nostdlib", "-static", "-o", str(exe), str(obj), "-Wl,--unresolved-symbols=ignore-all"],
        check=True,
        capture_output=True,
    )
    cases["executable"] = exe.read_bytes()
    for name, blob in cases.items():
        path = tmp_path / f"{name}.o"
        path.write_bytes(blob)
        with pytest.raises(UserError, match=f"^{path}: ") as err:
            klp.convert(path, CONVERT, tmp_path / "out.o")
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="cannot read"):
        klp.convert(tmp_path / "missing.o", CONVERT)


def test_signed_module_is_refused(tmp_path):
    obj = compile_obj(tmp_path)
    sig = bytes(8) + (0).to_bytes(4, "big")
    signed = tmp_path / "signed.ko"
    signed.write_bytes(obj.read_bytes() + sig + b"~Module signature appended~\n")
    with pytest.raises(UserError, match="module is signed"):
        klp.convert(signed, CONVERT, tmp_path / "out.ko")


# A static branch as the kernel's arch_static_branch() emits it: a __jump_table entry (code, target,
# key), and a static call site (.static_call_sites: call, key), both keyed on `own_key`.
LOAD_TIME_SRC = """
extern char own_key;
int user(int x)
{
    asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\\n"
         ".pushsection __jump_table, \\"aw\\"\\n .balign 8\\n"
         ".long 1b - ., %l[l_yes] - .\\n .quad own_key - .\\n .popsection\\n"
         ".pushsection .static_call_sites, \\"a\\"\\n .long 1b - ., own_key - .\\n .popsection\\n"
         : : : : l_yes);
    return x;
l_yes:
    return x + 1;
}
int other(int x) { return x * 3; }
"""


def _load_time_obj(tmp_path):
    src = tmp_path / "jl.c"
    src.write_text(LOAD_TIME_SRC)
    obj = tmp_path / "jl.o"
    subprocess.run(["gcc", *FLAGS, "-c", str(src), "-o", str(obj)], check=True)
    return obj


def test_module_key_in_load_time_section_is_refused(tmp_path):
    """A target module's symbol in __jump_table/.static_call_sites: the loader reads those entries
    before livepatch writes .klp.rela.<module>: refused (class named), nothing written."""
    obj = _load_time_obj(tmp_path)
    out = tmp_path / "out.o"
    with pytest.raises(klp.SpecialSectionError) as exc:
        klp.convert(obj, {"own_key": ("kyber_iosched", 0)}, out)
    assert exc.value.objname == "kyber_iosched"
    assert exc.value.sites == [("user", ".static_call_sites", "own_key"), ("user", "__jump_table", "own_key")]
    msg = str(exc.value)
    assert msg.startswith("special-section-in-target-module: user uses kyber_iosched's own own_key (")
    assert "\n" not in msg and exc.value.exit_code == 1
    assert not out.exists()


def test_vmlinux_key_in_load_time_section_is_converted(tmp_path):
    """vmlinux's .klp.rela sections are applied at module load, before jump labels are processed."""
    obj = _load_time_obj(tmp_path)
    res = klp.convert(obj, {"own_key": ("vmlinux", 0)}, tmp_path / "out.o")
    assert ".klp.rela.vmlinux.__jump_table" in res.sections
    assert ".klp.rela.vmlinux..static_call_sites" in res.sections


# A module target's symbol in each kind of section: code, read-only data and a note nobody loads
# (always), plus one of: a module parameter (read by the loader), data made read-only after init,
# an alternative's replacement code (copied over the original instruction by the loader).
SITES_SRC = """
extern int own_var;
extern void own_func(void);
struct param { const char *name; void *arg; };
int user(int x)
{
    asm volatile(".pushsection .unloaded_note, \\"\\"\\n .quad own_var\\n .popsection");
    return x + own_var;
}
int *const ro_table[] = { &own_var };
"""
SITES_EXTRA = {
    "__param": 'static const struct param __param_own __attribute__((used, section("__param"))) = { "own", &own_var };',
    ".data..ro_after_init": 'int *ro_after_init_ptr __attribute__((section(".data..ro_after_init"))) = &own_var;',
    ".altinstr_replacement": """
void alt_user(void)
{
    asm volatile("661: .byte 0x0f,0x1f,0x44,0x00,0x00\\n662:\\n"
         ".pushsection .altinstructions, \\"a\\"\\n .long 661b - ., 6641f - .\\n .word 0\\n"
         ".byte 662b - 661b, 6642f - 6641f\\n .popsection\\n"
         ".pushsection .altinstr_replacement, \\"ax\\"\\n6641: call own_func\\n6642:\\n .popsection\\n");
}
""",
}


def _sites_obj(tmp_path, extra=None):
    src = tmp_path / "sites.c"
    src.write_text(SITES_SRC + (SITES_EXTRA[extra] if extra else ""))
    obj = tmp_path / "sites.o"
    subprocess.run(["gcc", *FLAGS, "-c", str(src), "-o", str(obj)], check=True)
    return obj


def test_module_target_in_code_and_plain_data_is_converted(tmp_path):
    """.text and .rodata are the patch module's own: livepatch writes them when the target loads."""
    obj = _sites_obj(tmp_path)
    out = tmp_path / "out.o"
    res = klp.convert(obj, {"own_var": ("binfmt_misc", 0)}, out)
    assert sorted(res.sections) == [".klp.rela.binfmt_misc..rodata", ".klp.rela.binfmt_misc..text"]
    rows = relocs(out)
    assert {r[0] for r in rows if r[4] == ".klp.sym.binfmt_misc.own_var,0"} == {
        ".klp.rela.binfmt_misc..text",
        ".klp.rela.binfmt_misc..rodata",
        ".rela.unloaded_note",  # never applied by the loader, so neither moved nor refused
    }


@pytest.mark.parametrize("section, site", [("__param", "__param_own"), (".data..ro_after_init", "ro_after_init_ptr")])
def test_module_target_in_loader_data_is_refused(tmp_path, section, site):
    """The loader reads __param (and write-protects .data..ro_after_init) before livepatch writes
    .klp.rela.<module>: refused, naming the section and the symbol; nothing written."""
    obj = _sites_obj(tmp_path, section)
    out = tmp_path / "out.o"
    with pytest.raises(klp.SpecialSectionError) as exc:
        klp.convert(obj, {"own_var": ("binfmt_misc", 0)}, out)
    assert exc.value.sites == [(site, section, "own_var")]
    msg = str(exc.value)
    assert msg.startswith(f"special-section-in-target-module: {site} uses binfmt_misc's own own_var ({section}): ")
    assert "\n" not in msg and exc.value.exit_code == 1
    assert not out.exists()


def test_module_target_in_alternative_replacement_is_refused(tmp_path):
    """.altinstr_replacement is code, but the loader copies it over the original instruction at load
    time; the site is the function whose .altinstructions entry points at the replacement."""
    obj = _sites_obj(tmp_path, ".altinstr_replacement")
    out = tmp_path / "out.o"
    with pytest.raises(klp.SpecialSectionError) as exc:
        klp.convert(obj, {"own_func": ("binfmt_misc", 0)}, out)
    assert exc.value.sites == [("alt_user", ".altinstr_replacement", "own_func")]
    assert str(exc.value).startswith(
        "special-section-in-target-module: alt_user uses binfmt_misc's own own_func (.altinstr_replacement): "
    )
    assert not out.exists()
    # vmlinux's are applied while the patch module loads, before alternatives are
    res = klp.convert(obj, {"own_func": ("vmlinux", 0)}, out)
    assert res.sections == (".klp.rela.vmlinux..altinstr_replacement",)


@pytest.mark.parametrize(
    "section, allowed",
    [
        (".text", True),
        (".text.unlikely.foo", True),
        (".rodata.str1.1", True),
        (".data..read_mostly", True),
        (".textual", False),
        (".altinstr_replacement", False),
        (".data..ro_after_init", False),
        (".data..percpu", False),
        (".init.text", False),
        (".bss", False),
        ("__param", False),
        ("__bug_table", False),
    ],
)
def test_module_target_allowlist(section, allowed):
    assert klp.module_target_allowed(section) is allowed


def test_a_target_module_leaves_depends(tmp_path):
    """modpost's depends= names the target whose export the module used; once that symbol is a
    livepatch symbol the patch must load without the target: only other modules stay."""
    src = tmp_path / "m.c"
    src.write_text(
        SRC + 'static const char modinfo[] __attribute__((section(".modinfo"), used)) =\n'
        '\t"license=GPL\\0depends=nf_conntrack,libcrc32c,nf-defrag-ipv4\\0vermagic=6.1\\0";\n'
    )
    obj = tmp_path / "m.o"
    subprocess.run(["gcc", *FLAGS, "-c", str(src), "-o", str(obj)], check=True)
    before = sections(obj)[".modinfo"][1]
    klp.convert(obj, {"hidden_func": ("nf_conntrack", 0), "hidden_var": ("nf_defrag_ipv4", 0)})
    after = sections(obj)[".modinfo"][1]
    assert len(after) == len(before)
    assert [e for e in after.split(b"\0") if e] == [b"license=GPL", b"depends=libcrc32c", b"vermagic=6.1"]
    klp.convert(obj, {"other_func": ("vmlinux", 0)})  # vmlinux targets change nothing
    assert sections(obj)[".modinfo"][1] == after
