"""`kgenv snapshot BUILD_DIR` input handling on a small build dir whose vmlinux the host gcc links."""

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kgenv.env import buildtree, kbuildcmd, sourcetree
from kgenv.env.fingerprint import fingerprint
from kgenv.env.vendor import line_of, parse_make_vars, tree_paths
from kgenv.errors import RefusedError, UserError

RELEASE = "6.1.0-test"
UTS_VERSION = "#1 SMP PREEMPT_DYNAMIC Test 6.1.0-1 (2026-01-01)"


def host_cc() -> str:
    return subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def _note(name: bytes, ntype: int, desc: bytes) -> str:
    """An ELF note as assembler directives (the kernel's ELFNOTE macro does the same)."""
    body = struct.pack("<III", len(name) + 1, len(desc), ntype) + name + b"\0"
    body += b"\0" * (-len(body) % 4) + desc + b"\0" * (-len(desc) % 4)
    return '.pushsection .notes,"a",@note\n.balign 4\n' + "".join(f".byte {b}\n" for b in body) + ".popsection\n"


def link_vmlinux(dest: Path, banner: str, salt: str, build_id: bool = True, ikconfig: str | None = None) -> Path:
    """A tiny x86-64 ELF with a kernel's banner, BUILD_SALT note, .comment and (optionally) build-id."""
    c = dest.parent.parent / f"{dest.name}-{os.getpid()}.c"
    asm = _note(b"Linux", buildtree.LINUX_ELFNOTE_BUILD_SALT, salt.encode() + b"\0")
    blob = ""
    if ikconfig is not None:
        data = b"IKCFG_ST" + gzip.compress(ikconfig.encode(), mtime=0) + b"IKCFG_ED"
        blob = "const unsigned char kernel_config_data[] = {" + ",".join(map(str, data)) + "};\n"
    literal = '"' + asm.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    c.write_text(
        f'const char linux_banner[] = "{banner}\\n";\n{blob}__asm__({literal});\nvoid _start(void) {{ for (;;); }}\n'
    )
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-nostdlib",
            "-static",
            "-no-pie",
            f"-Wl,--build-id={'sha1' if build_id else 'none'}",
            "-o",
            str(dest),
            str(c),
        ],
        check=True,
        capture_output=True,
    )
    return dest


CONFIG = {
    "CC_VERSION_TEXT": None,
    "GCC_VERSION": "120200",
    "BUILD_SALT": f'"{RELEASE}"',
    "SMP": "y",
    "EXT4_FS": "m",
    "HZ": "250",
    "PHYSICAL_START": "0x1000000",
    "LOCALVERSION": '""',
}


def write_config(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"CONFIG_{k}={v}\n" for k, v in values.items()) + "# CONFIG_KASAN is not set\n")


def make_tree(tmp: Path, *, build_id: bool = True) -> Path:
    """src/ (a minimal kernel source) and build/ (its O= directory) as Kbuild leaves them."""
    src, build = tmp / "src", tmp / "build"
    (src / "init").mkdir(parents=True)
    (src / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\nEXTRAVERSION =\n")
    (src / "Kconfig").write_text('mainmenu "test"\n')
    (src / "init" / "main.c").write_text("int main_init;\n")
    gen = build / "include" / "generated"
    gen.mkdir(parents=True)
    cc = host_cc()
    values = {**CONFIG, "CC_VERSION_TEXT": f'"{cc}"'}
    write_config(build / ".config", values)
    (gen / "autoconf.h").write_text(
        "".join(
            f"#define CONFIG_{k}{'_MODULE' if v == 'm' else ''} {'1' if v in ('y', 'm') else v}\n"
            for k, v in values.items()
        )
    )
    (gen / "utsrelease.h").write_text(f'#define UTS_RELEASE "{RELEASE}"\n')
    (gen / "utsversion.h").write_text(f'#define UTS_VERSION "{UTS_VERSION}"\n')
    compiler = f"{cc}, GNU ld (GNU Binutils for Debian) 2.40"
    (gen / "compile.h").write_text(
        f'#define LINUX_COMPILE_BY "builder"\n#define LINUX_COMPILE_HOST "example"\n'
        f'#define LINUX_COMPILER "{compiler}"\n'
    )
    (build / "Module.symvers").write_text("0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n")
    (build / "source").symlink_to(src)
    link_vmlinux(
        build / "vmlinux", f"Linux version {RELEASE} (builder@example) ({compiler}) {UTS_VERSION}", RELEASE, build_id
    )
    # Built before anything is inspected: sources and config are older than the link.
    for p in (build / ".config", gen / "autoconf.h", src / "init" / "main.c", src / "Makefile", src / "Kconfig"):
        os.utime(p, (1_700_000_000, 1_700_000_000))
    return build


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path)


def test_consistent_build_dir_passes(tree):
    t = buildtree.open_tree(tree)
    assert t.source == tree.parent / "src" and not t.in_tree and t.bzimage is None
    binary = buildtree.check(t)
    assert len(binary["build_id"]) == 40


def test_missing_config_names_the_file(tree):
    (tree / ".config").unlink()
    with pytest.raises(UserError, match=f"{tree / '.config'}: missing"):
        buildtree.open_tree(tree)


def test_missing_source_link_and_not_a_tree(tmp_path):
    (tmp_path / "vmlinux").write_bytes(b"")
    with pytest.raises(UserError, match="neither an O= build directory"):
        buildtree.open_tree(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        buildtree.open_tree(tmp_path / "nope")


def test_no_build_id_is_refused(tmp_path):
    t = buildtree.open_tree(make_tree(tmp_path, build_id=False))
    with pytest.raises(RefusedError, match="no GNU build-id"):
        buildtree.check(t)


def test_stripped_vmlinux_is_refused(tree):
    subprocess.run(["strip", str(tree / "vmlinux")], check=True)
    os.utime(tree / "vmlinux", (1_700_000_100, 1_700_000_100))
    with pytest.raises(RefusedError, match="stripped"):
        buildtree.check(buildtree.open_tree(tree))


@pytest.mark.parametrize("part", [".config", "vmlinux", "Module.symvers", "include/generated"])
def test_symlink_out_of_build_dir_is_refused(tree, tmp_path, part):
    outside = tmp_path / "elsewhere"
    target = tree / part
    os.rename(target, outside)
    target.symlink_to(outside)
    with pytest.raises(RefusedError, match=f"{target}: symlink leads outside"):
        buildtree.open_tree(tree)


def test_symlink_inside_build_dir_is_followed(tree):
    os.rename(tree / ".config", tree / "config.real")
    (tree / ".config").symlink_to("config.real")
    assert buildtree.open_tree(tree).config == tree / "config.real"


def test_source_symlink_escaping_the_source_tree_is_refused(tree):
    src = tree.parent / "src"
    (src / "init" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(RefusedError, match="leaves the source tree"):
        sourcetree.listing(src)
    (src / "init" / "passwd").unlink()
    (src / "init" / "up").symlink_to("../../build/.config")
    with pytest.raises(RefusedError, match="leaves the source tree"):
        sourcetree.listing(src)


def test_config_not_matching_autoconf_is_refused(tree):
    text = (tree / ".config").read_text().replace("CONFIG_HZ=250", "CONFIG_HZ=1000")
    (tree / ".config").write_text(text)
    os.utime(tree / ".config", (1_700_000_000, 1_700_000_000))
    with pytest.raises(RefusedError, match=r"differs from the autoconf.h .*CONFIG_HZ"):
        buildtree.check(buildtree.open_tree(tree))


def test_config_compiler_not_the_binarys_is_refused(tree):
    text = (tree / ".config").read_text()
    cc = host_cc()
    (tree / ".config").write_text(text.replace(cc, cc.replace(") ", "+x) ", 1)))
    with pytest.raises(RefusedError, match="is not the compiler of"):
        buildtree.check(buildtree.open_tree(tree))


def test_build_salt_mismatch_is_refused(tree):
    for name in (".config", "include/generated/autoconf.h"):
        p = tree / name
        p.write_text(p.read_text().replace(f'"{RELEASE}"', '"other-salt"'))
        os.utime(p, (1_700_000_000, 1_700_000_000))
    with pytest.raises(RefusedError, match="BUILD_SALT"):
        buildtree.check(buildtree.open_tree(tree))


def test_release_mismatch_is_refused(tree):
    (tree / "include/generated/utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-other"\n')
    with pytest.raises(RefusedError, match="banner release 6.1.0-test is not 6.1.0-other"):
        buildtree.check(buildtree.open_tree(tree))


def test_config_edited_after_the_link_is_refused(tree):
    os.utime(tree / ".config")  # now: later than vmlinux
    os.utime(tree / "vmlinux", (1_700_000_100, 1_700_000_100))
    with pytest.raises(RefusedError, match="changed after"):
        buildtree.check(buildtree.open_tree(tree))


def test_embedded_ikconfig_must_equal_config(tree):
    t = buildtree.open_tree(tree)
    cfg = (tree / ".config").read_text()
    banner = (
        f"Linux version {RELEASE} (builder@example) ({host_cc()}, GNU ld (GNU Binutils for Debian) 2.40) {UTS_VERSION}"
    )
    link_vmlinux(tree / "vmlinux", banner, RELEASE, ikconfig=cfg)
    assert buildtree.embedded_config(tree / "vmlinux") == cfg
    buildtree.check(t)
    link_vmlinux(tree / "vmlinux", banner, RELEASE, ikconfig=cfg.replace("CONFIG_HZ=250", "CONFIG_HZ=100"))
    with pytest.raises(RefusedError, match="CONFIG_IKCONFIG"):
        buildtree.check(t)


def _bzimage(path: Path, version: str) -> None:
    head = bytearray(0x1000)
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x20E, 0x200)
    head[0x400 : 0x400 + len(version)] = version.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(head))


def test_boot_image_of_another_kernel_is_refused(tree):
    bz = tree / "arch/x86/boot/bzImage"
    _bzimage(bz, f"{RELEASE} (builder@example) {UTS_VERSION}")
    assert buildtree.bzimage_version(bz) == f"{RELEASE} (builder@example) {UTS_VERSION}"
    buildtree.check(buildtree.open_tree(tree))
    _bzimage(bz, f"{RELEASE} (builder@example) #2 SMP")
    with pytest.raises(RefusedError, match="is not the kernel of"):
        buildtree.check(buildtree.open_tree(tree))


def test_paths_without_dwarf_come_from_the_source_link(tree):
    t = buildtree.open_tree(tree)
    fp = fingerprint(t.vmlinux, t.config, t.generated)
    assert tree_paths(t, fp, {}) == (str(t.source), "kgenv-build")  # O= outside the source: relocated
    cmd = {
        "kernel/.bounds.s.cmd": "cmd_kernel/bounds.s := gcc\n\nsource_kernel/bounds.s := /build/linux-6.1/kernel/bounds.c\n"
    }
    assert tree_paths(t, fp, cmd) == ("/build/linux-6.1", "kgenv-build")
    with pytest.raises(RefusedError, match="cannot be the tree's place"):
        tree_paths(t, fp, {"x": "source_a/b.o := /usr/lib/a/b.c\n"})


def test_cli_refusals_are_one_line(tree):
    (tree / "include/generated/utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-other"\n')
    r = subprocess.run(
        [sys.executable, "-m", "kgenv", "snapshot", "--json", str(tree)],
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"},
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    (tree / ".config").unlink()
    r = subprocess.run([sys.executable, "-m", "kgenv", "snapshot", str(tree)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == f"kgenv: {tree / '.config'}: missing (the build's kernel config)\n"


# --- .cmd files ---------------------------------------------------------------------------------

BOUNDS = (
    "gcc-12 -Wp,-MMD,kernel/.bounds.s.d -nostdinc -I/src/include -D__KERNEL__ -O2 {k}-I /src/. -I ./. "
    "-DKBUILD_MODFILE='\"./bounds\"' -fverbose-asm -S -o kernel/bounds.s /src/kernel/bounds.c"
)


def test_kcflags_are_read_off_the_vendor_command():
    marked = BOUNDS.format(k=kbuildcmd.KCFLAGS_MARK + " ")
    vendor = BOUNDS.format(k="-fdebug-prefix-map=/src/= -fno-ipa-sra ")
    assert kbuildcmd.derive_kcflags(vendor, marked, "x") == "-fdebug-prefix-map=/src/= -fno-ipa-sra"
    assert kbuildcmd.derive_kcflags(BOUNDS.format(k=""), marked, "x") == ""
    assert kbuildcmd.derive_kcflags("ccache " + vendor, marked, "x").startswith("-fdebug-prefix-map")
    with pytest.raises(RefusedError, match="differ beyond KCFLAGS.*-O3"):
        kbuildcmd.derive_kcflags(BOUNDS.format(k="").replace("-O2", "-O3"), marked, "x")


def test_cmd_compare_and_compiler():
    env = {"kernel/.bounds.s.cmd": BOUNDS.format(k=""), "scripts/basic/.fixdep.cmd": "gcc-12 -o fixdep fixdep.c"}
    vendor = {**env, "scripts/basic/.fixdep.cmd": "gcc -o fixdep fixdep.c", "init/.main.o.cmd": "x"}
    n, diffs = kbuildcmd.compare(vendor, env)
    assert n == 2 and [(d.file, d.kernel) for d in diffs] == [("scripts/basic/.fixdep.cmd", False)]
    vendor["kernel/.bounds.s.cmd"] = BOUNDS.format(k="-g0 ")
    _, diffs = kbuildcmd.compare(vendor, env)
    assert diffs[0].kernel and "has -g0 where the env's has nothing" in diffs[0].detail
    assert kbuildcmd.kernel_cc({"a": "ccache /usr/bin/gcc-12 -nostdinc -D__KERNEL__ -c a.c"}) == "gcc-12"
    text = "savedcmd_init/main.o := gcc -c x\n\nsource_init/main.o := /b/linux/init/main.c\n"
    assert kbuildcmd.command(text) == "gcc -c x" and kbuildcmd.srctree(text) == "/b/linux"


def test_cmd_files_are_found_without_following_links(tree, tmp_path):
    (tree / "kernel").mkdir()
    (tree / "kernel" / ".bounds.s.cmd").write_text("cmd_kernel/bounds.s := gcc\n")
    (tmp_path / ".evil.cmd").write_text("cmd_x := y\n")
    (tree / "kernel" / ".evil.cmd").symlink_to(tmp_path / ".evil.cmd")
    assert list(kbuildcmd.find(tree)) == ["kernel/.bounds.s.cmd"]


def test_cmd_heads_of_kbuild_and_tools_build_files(tmp_path):
    kbuild = tmp_path / ".a.o.cmd"
    kbuild.write_text("cmd_a.o := gcc -c a.c\n\nsource_a.o := /s/a.c\n\ndeps_a.o := \\\n" + "  x.h \\\n" * 10000)
    assert kbuildcmd.head(kbuild) == "cmd_a.o := gcc -c a.c\n\nsource_a.o := /s/a.c\n"
    tools = tmp_path / ".fixdep.o.cmd"  # tools/build: dependencies first, the command last
    tools.write_text("# cannot find fixdep\n\nfixdep.o: \\\n fixdep.c\n\ncmd_fixdep.o := gcc -c fixdep.c\n")
    assert kbuildcmd.command(kbuildcmd.head(tools)) == "gcc -c fixdep.c"


# --- source tarball -----------------------------------------------------------------------------


def test_source_tarball_is_deterministic(tree, tmp_path):
    src = tree.parent / "src"
    a = sourcetree.write(src, sourcetree.listing(src), tmp_path / "a.tar", 1_700_000_000)
    copy = tmp_path / "elsewhere-named"
    subprocess.run(["cp", "-r", str(src), str(copy)], check=True)  # new mtimes, another directory name
    (copy / ".git").mkdir()
    (copy / ".git" / "HEAD").write_text("0123456789abcdef0123456789abcdef01234567\n")
    b = sourcetree.write(copy, sourcetree.listing(copy), tmp_path / "b.tar", 1_700_000_000)
    assert a.sha256 == b.sha256 and a.files == 4 and b.git_head.startswith("0123")
    names = subprocess.run(["tar", "-tf", str(a.path)], capture_output=True, text=True).stdout.split()
    assert names == ["linux/", "linux/Kconfig", "linux/Makefile", "linux/init/", "linux/init/main.c"]


def test_in_tree_build_keeps_git_sources_only(tmp_path):
    src = tmp_path / "linux"
    (src / "init").mkdir(parents=True)
    (src / ".gitignore").write_text("*.o\n.*.cmd\n/vmlinux\n")
    (src / "init" / "main.c").write_text("int x;\n")
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    (src / "init" / "main.o").write_bytes(b"\x7fELF")
    (src / "init" / ".main.o.cmd").write_text("cmd_init/main.o := gcc\n")
    (src / "vmlinux").write_bytes(b"\x7fELF")
    entries = sourcetree.filter_outputs(sourcetree.listing(src), sourcetree.git_sources(src), src)
    assert entries == [".gitignore", "init", "init/main.c"]
    plain = tmp_path / "plain"
    (plain / "init").mkdir(parents=True)
    with pytest.raises(RefusedError, match="outside a git work tree"):
        sourcetree.git_sources(plain)


def test_build_inputs_changed_after_the_link_are_found(tree):
    src = tree.parent / "src"
    assert sourcetree.modified_after(src, sourcetree.listing(src), 1_700_000_050) == []
    os.utime(src / "init" / "main.c")
    assert sourcetree.modified_after(src, sourcetree.listing(src), 1_700_000_050) == ["init/main.c"]


def test_git_head_from_refs(tmp_path):
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text("# pack-refs\n" + "a" * 40 + " refs/heads/main\n")
    assert sourcetree.git_head(tmp_path) == "a" * 40
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert sourcetree.git_head(tmp_path) == "b" * 40
    (git / "HEAD").write_text("ref: ../../etc/passwd\n")
    assert sourcetree.git_head(tmp_path) == ""


# --- options ------------------------------------------------------------------------------------


def test_line_and_make_options():
    assert line_of("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0", None) == "bookworm"
    assert line_of("gcc-14 (Debian 14.2.0-19) 14.2.0", "trixie") == "trixie"
    with pytest.raises(UserError, match="not a known Debian release"):
        line_of("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0", "jessie-ish")
    assert parse_make_vars(["KCFLAGS=-O2 -g", "LOCALVERSION="]) == {"KCFLAGS": "-O2 -g", "LOCALVERSION": ""}
    with pytest.raises(UserError, match="expected VAR=VALUE"):
        parse_make_vars(["-j4"])
