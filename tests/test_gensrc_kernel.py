"""Real-kernel tier: livepatch sources of patched Debian kernel files, generated and compiled in the env image."""

from pathlib import Path

import pytest

from kgenv.build.compile import cmd_file, compile_tus
from kgenv.build.source import generate_source
from kgenv.elf.symbols import STB_LOCAL, SymbolIndex
from kgenv.runtime.base import Mount

pytestmark = pytest.mark.docker

FILES = {
    "fs/proc/cmdline.c": (
        "\tseq_puts(m, saved_command_line);\n",
        '\tseq_puts(m, saved_command_line);\n\tseq_puts(m, " livepatched");\n',
    ),
    # the second fixture: a fix calling a static helper and reading static variables
    "fs/filesystems.c": (
        "\tread_lock(&file_systems_lock);\n\tfs = *(find_filesystem(name, len));",
        "\tif (!len)\n\t\treturn NULL;\n\tread_lock(&file_systems_lock);\n\tfs = *(find_filesystem(name, len));",
    ),
}


@pytest.fixture(scope="module")
def work(env, docker_rt, tmp_path_factory):
    """Original sources from the env image, a patched overlay, and the TUs' Kbuild .cmd files."""
    root = tmp_path_factory.mktemp("gensrc")
    orig = root / "orig"
    orig.mkdir()
    r = docker_rt.run(
        env.image.id,
        ["bash", "-c", "cp --parents " + " ".join(FILES) + " /out/"],
        [Mount(orig, "/out", read_only=False)],
        workdir=env.kernel.srctree,
    )
    assert r.exit_code == 0, r.output
    overlay = root / "overlay"
    for path, (old, new) in FILES.items():
        text = (orig / path).read_text()
        assert text.count(old) == 1, f"{path} changed upstream: fix the test's patch"
        (overlay / path).parent.mkdir(parents=True, exist_ok=True)
        (overlay / path).write_text(text.replace(old, new))
    objs = compile_tus(docker_rt, env, [p[:-2] + ".o" for p in FILES], root / "objs")
    return root, orig, overlay, objs


@pytest.fixture(scope="module")
def present(env):
    """Whether the running kernel has a TU's function/variable as a symbol (statics of that file only)."""
    index = SymbolIndex.open(env.files["vmlinux"].resolve())

    def check(source: str):
        base = Path(source).name
        return lambda name, kind: any(
            s.defined and (s.bind != STB_LOCAL or s.file == base) for s in index.by_name.get(name, ())
        )

    return check


def generated(env, docker_rt, work, present, source: str, keep: set[str]):
    root, _, overlay, objs = work
    tu = source[:-2] + ".o"
    return generate_source(
        docker_rt,
        env,
        source,
        overlay,
        objs[tu].parent / Path(cmd_file(tu)).name,
        keep,
        present(source),
        root / "gen" / Path(source).stem,
    )


def compiled(env, docker_rt, work, source: str, text: str) -> dict:
    """The generated text compiled as the TU itself, with the kernel's exact flags and objtool."""
    root = work[0]
    overlay = root / f"as-{Path(source).stem}"
    (overlay / source).parent.mkdir(parents=True, exist_ok=True)
    (overlay / source).write_text(text)
    obj = compile_tus(docker_rt, env, [source[:-2] + ".o"], root / f"objs-{Path(source).stem}", overlay=overlay)[
        source[:-2] + ".o"
    ]
    return SymbolIndex.open(obj)


def test_cmdline_keeps_the_fix_and_drops_init(env, docker_rt, work, present):
    g = generated(env, docker_rt, work, present, "fs/proc/cmdline.c", {"cmdline_proc_show"})
    assert g.refusals == [] and g.replaced == ["cmdline_proc_show"] and g.copied == [] and g.externs == []
    assert 'seq_puts(m, " livepatched");' in g.text
    assert "proc_cmdline_init" not in g.text and "fs_initcall" not in g.text
    assert "#include <linux/seq_file.h>" in g.text
    assert g.facts["diagnostics"]["main_file_errors"] == 0
    syms = compiled(env, docker_rt, work, "fs/proc/cmdline.c", g.text)
    funcs = {s.name: s for s in syms.symbols if s.is_func and s.defined}
    assert set(funcs) == {"cmdline_proc_show", "livepatch_cmdline_proc_show"}
    assert funcs["livepatch_cmdline_proc_show"].bind != STB_LOCAL
    assert not any(s.section.startswith(".init") or "initcall" in s.section for s in syms.symbols if s.defined)


def test_filesystems_static_helper_and_state(env, docker_rt, work, present):
    g = generated(env, docker_rt, work, present, "fs/filesystems.c", {"__get_fs_type"})
    assert g.refusals == []
    assert g.replaced == ["__get_fs_type"]
    assert g.copied == ["find_filesystem"]  # inlined everywhere in the running kernel: copied as code
    assert [(e.name, e.kind, e.static) for e in g.externs] == [
        ("file_systems", "variable", True),
        ("file_systems_lock", "variable", True),
    ]
    assert "extern rwlock_t file_systems_lock;" in g.text and "DEFINE_RWLOCK" not in g.text
    assert "extern struct file_system_type *file_systems;" in g.text
    for gone in ("EXPORT_SYMBOL", "module_init", "SYSCALL_DEFINE3", "int register_filesystem(", "list_bdev_fs_names"):
        assert gone not in g.text
    syms = compiled(env, docker_rt, work, "fs/filesystems.c", g.text)
    by = {s.name: s for s in syms.symbols if s.name}
    assert not by["file_systems"].defined and not by["file_systems_lock"].defined
    assert by["__get_fs_type"].defined
    # the copied helper is compiled in (gcc inlines it again): never an undefined reference
    assert "find_filesystem" not in by or by["find_filesystem"].defined
    assert not by["strncmp"].defined  # find_filesystem's own callee
    assert by["livepatch___get_fs_type"].defined and by["livepatch___get_fs_type"].bind != STB_LOCAL
    defined_data = {s.name for s in syms.symbols if s.defined and s.type == 1}
    assert defined_data == set(), defined_data  # no second copy of kernel state
    assert not any(s.section.startswith(("___ksymtab", ".init")) for s in syms.symbols if s.defined)


def test_filesystems_refuses_an_init_function(env, docker_rt, work, present):
    g = generated(env, docker_rt, work, present, "fs/filesystems.c", {"list_bdev_fs_names"})
    assert any("list_bdev_fs_names is __init" in r for r in g.refusals)


def test_filesystems_syscall_without_metadata(env, docker_rt, work, present):
    """SYSCALL_DEFINE3(sysfs): the wrapper is replaced; its ftrace metadata stays the kernel's."""
    g = generated(env, docker_rt, work, present, "fs/filesystems.c", {"__x64_sys_sysfs"})
    assert g.refusals == [] and g.replaced == ["__x64_sys_sysfs"]
    assert "#define SYSCALL_METADATA(sname, nb, ...)\nSYSCALL_DEFINE3(sysfs" in g.text
    syms = compiled(env, docker_rt, work, "fs/filesystems.c", g.text)
    by = {s.name: s for s in syms.symbols if s.name}
    assert not any("syscall_meta" in n or "__sysfs" in n and s.type == 1 for n, s in by.items())
    assert by["livepatch___x64_sys_sysfs"].defined and not by["file_systems_lock"].defined
    for helper in ("fs_index", "fs_name", "fs_maxindex"):  # statics: the kernel's copy or compiled in
        assert helper in g.copied or any(e.name == helper for e in g.externs)
        assert helper not in by or by[helper].defined == (helper in g.copied)
