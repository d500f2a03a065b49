"""Where a rebuilt TU's names live in the running binary, and what a module target needs loaded first."""

import pytest
from verify_build import compile_c, link, runtime

from kgenv.build.skeleton import tu_flags
from kgenv.build.target import VMLINUX, Resolver, Target, module_name
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
    from kgenv.build.target import load_order, shipped_modules

    shipped = shipped_modules(env)
    order = [p.name for p in load_order(env, Target("ext4", shipped["ext4"]))]
    assert order[-1] == "ext4.ko" and "jbd2.ko" in order and "mbcache.ko" in order
    assert [p.name for p in load_order(env, Target("binfmt_misc", shipped["binfmt_misc"]))] == ["binfmt_misc.ko"]
