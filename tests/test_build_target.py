"""Where a rebuilt TU's names live in the running binary, and what a module target needs loaded first."""

import pytest
from verify_build import compile_c, link, runtime

from kgenv.build import skeleton
from kgenv.build.skeleton import tu_flags
from kgenv.build.target import VMLINUX, Resolver, Target, gnu_build_id, module_name
from kgenv.errors import UserError
from kgenv.fsutil import cache_dir
from kgenv.verify.mapping import ObjectFile


def test_inlined_static_is_not_a_same_named_global_elsewhere(tmp_path):
    a = compile_c(
        tmp_path,
        "a.c",
        """
        static int counter;
        static int helper(int x) { return x + counter; }
        int a_fn(int x) { return helper(x) * 2; }
        int a_bump(void) { return ++counter; }
    """,
    )
    b = compile_c(tmp_path, "b.c", "int helper(int x) { return x * 3; }\n")
    binary = link(tmp_path / "vmlinux", [runtime(tmp_path), a, b])
    r = Resolver(Target(VMLINUX, binary), ObjectFile(a, "a.o"))
    assert r.present("a_fn") and r.present("counter")
    # a.c's helper was inlined: b.c's global helper must not stand in for it
    assert not r.present("helper")
    # ...while new code naming a kernel global the file never used still resolves
    assert r.position("helper") == (VMLINUX, 0)
    assert r.position("a_fn") == (VMLINUX, 0)


def test_module_name_and_flags_from_the_kbuild_command():
    cmd = [
        "gcc",
        "-I/src/include",
        "-I",
        "./fs/proc",
        "-I./include",
        "-DMODULE",
        "-DKBUILD_MODNAME='\"binfmt_misc\"'",
        "-D__KBUILD_MODNAME=kmod_binfmt_misc",
        "-include",
        "/src/include/linux/kconfig.h",
        "-DFOO=1",
        "-O2",
    ]
    assert module_name(cmd) == "binfmt_misc"
    assert module_name([c for c in cmd if c != "-DMODULE"]) is None
    assert tu_flags(cmd, "/src", "obj") == ("-I/src/include", "-I/src/obj/fs/proc", "-I/src/obj/include", "-DFOO=1")


@pytest.mark.docker
def test_module_targets_load_after_their_dependencies(env):
    """From the shipped modules' own depends= (Debian ships no modules.dep: depmod runs on install)."""
    from kgenv.build.target import load_plan, shipped_modules

    shipped = shipped_modules(env)
    order = [p.name for p in load_plan(env, [Target("ext4", shipped["ext4"])]).paths]
    assert order[-1] == "ext4.ko" and "jbd2.ko" in order and "mbcache.ko" in order
    assert [p.name for p in load_plan(env, [Target("binfmt_misc", shipped["binfmt_misc"])]).paths] == ["binfmt_misc.ko"]
    assert load_plan(env, [Target(VMLINUX, env.file("vmlinux"))]).paths == ()


@pytest.mark.docker
@pytest.mark.parametrize("target", ["btrfs", "batman_adv", "dm_cache", "nf_conntrack"])
def test_softdep_pre_modules_load_before_what_needs_them(env, target):
    """libcrc32c's init allocates the "crc32c" hash, which its `softdep=pre: crc32c` names by alias:
    crc32c_generic (and crc32c-intel, optional: TCG's CPU has no SSE4.2) come before it."""
    from kgenv.build.target import load_plan, shipped_modules

    shipped = shipped_modules(env)
    plan = load_plan(env, [Target(target, shipped[target])])
    names = [p.name for p in plan.paths]
    assert len(names) == len(set(names)) and names[-1] == shipped[target].name
    assert names.index("crc32c_generic.ko") < names.index("libcrc32c.ko")
    assert names.index("crc32c-intel.ko") < names.index("libcrc32c.ko")
    optional = {p.name for p in plan.optional}
    assert {"crc32c_generic.ko", "crc32c-intel.ko"} <= optional
    # what depends= reaches is needed: its failure to load stays fatal in the guest
    assert "libcrc32c.ko" not in optional and shipped[target].name not in optional
    assert plan.notes == ()
    # the scan of every module's aliases is kept per kernel, under its build-id
    assert (cache_dir() / "modules" / f"modindex-{env.kernel.build_id}.json").is_file()


@pytest.mark.docker
def test_two_targets_share_one_order_and_a_needed_module_is_never_optional(env):
    from kgenv.build.target import load_plan, shipped_modules

    shipped = shipped_modules(env)
    # xt_LOG asks for nf_log_syslog by softdep only; nf_log_syslog's own chain is then optional too
    alone = load_plan(env, [Target("xt_LOG", shipped["xt_LOG"])])
    assert shipped["nf_log_syslog"] in alone.optional
    both = load_plan(env, [Target("xt_LOG", shipped["xt_LOG"]), Target("nf_log_syslog", shipped["nf_log_syslog"])])
    assert shipped["nf_log_syslog"] in both.paths and shipped["nf_log_syslog"] not in both.optional
    assert len(both.paths) == len(set(both.paths))


# -- the build-id guard ---------------------------------------------------------------------------

NOTES = r"""
__asm__(".pushsection .notes,\"a\",@note\n"
        /* a Xen note of type 3 first, as in Debian's vmlinux: the owner decides, not the type */
        ".long 4, 4, 3\n.asciz \"Xen\"\n.long 0x11111111\n"
        ".long 4, 20, 3\n.asciz \"GNU\"\n"
        ".byte 0x6a,0x2b,0x4a,0xc7,0x75,0x85,0xb8,0xcf,0x10,0x2c,0xba,0x77,0x13,0x00,0xe5,0x73,0xc8,0x48,0x9b,0x69\n"
        ".popsection\n");
int f(void) { return 1; }
"""


def test_gnu_build_id_is_the_gnu_owners_note(tmp_path):
    assert gnu_build_id(compile_c(tmp_path, "n.c", NOTES)) == "6a2b4ac77585b8cf102cba771300e573c8489b69"
    assert gnu_build_id(compile_c(tmp_path, "none.c", "int g(void) { return 2; }\n")) == ""


def test_registration_guards_every_object_with_its_build_id():
    ids = skeleton.guard_ids("6a" * 20, {"binfmt_misc": "d8" * 20})
    assert ids == {VMLINUX: "6a" * 20, "binfmt_misc": "d8" * 20}
    text = skeleton.render_registration(
        "fix", "6.1.0-57-amd64", [skeleton.Replacement("binfmt_misc", "bm_status_show", 0)], ids
    )
    # a module-only fix still has a vmlinux object (no functions) so the kernel itself is checked
    assert "static struct klp_func funcs_vmlinux[] = {\n\n\t{ }\n};" in text
    assert "{ .name = NULL, .funcs = funcs_vmlinux, .callbacks = { .pre_patch = kgenv_guard } }," in text
    assert '.name = "binfmt_misc", .funcs = funcs_binfmt_misc, .callbacks = { .pre_patch = kgenv_guard }' in text
    assert f'\t{{ "binfmt_misc", "{"d8" * 20}" }},\n\t{{ "vmlinux", "{"6a" * 20}" }},' in text
    assert "@" not in text  # every placeholder filled
    with pytest.raises(UserError, match="no usable GNU build-id for binfmt_misc"):
        skeleton.guard_ids("6a" * 20, {"binfmt_misc": ""})
    with pytest.raises(ValueError, match="do not match the patched objects"):
        skeleton.render_registration("fix", "r", [skeleton.Replacement("binfmt_misc", "f", 0)], {VMLINUX: "6a" * 20})


def test_same_named_statics_of_two_files_register_apart():
    """Two patched files each replace their own static `show`: two klp_funcs, two aliases, two sympos."""
    reps = [
        skeleton.Replacement(VMLINUX, "show", 2, "livepatch_fs_b__show"),
        skeleton.Replacement(VMLINUX, "show", 1, "livepatch_fs_a__show"),
        skeleton.Replacement(VMLINUX, "other", 0),
    ]
    text = skeleton.render_registration("fix", "r", reps, {VMLINUX: "6a" * 20})
    assert "extern void livepatch_fs_a__show(void);\nextern void livepatch_fs_b__show(void);" in text
    assert '{ .old_name = "show", .new_func = livepatch_fs_a__show, .old_sympos = 1 },' in text
    assert '{ .old_name = "show", .new_func = livepatch_fs_b__show, .old_sympos = 2 },' in text
    assert '{ .old_name = "other", .new_func = livepatch_other, .old_sympos = 0 },' in text


def test_registration_pins_only_when_asked():
    reps, ids = [skeleton.Replacement(VMLINUX, "f", 0)], {VMLINUX: "6a" * 20}
    assert "__module_get(THIS_MODULE)" not in skeleton.render_registration("fix", "r", reps, ids)
    pinned = skeleton.render_registration("fix", "r", reps, ids, pinned=True)
    assert "int ret = klp_enable_patch(&patch);\n\t/* kgenv:" in pinned
    assert "\tif (!ret)\n\t\t__module_get(THIS_MODULE);\n\treturn ret;" in pinned
