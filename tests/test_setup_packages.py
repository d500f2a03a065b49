"""scripts/setup installs every program kgenv and its tests run on this machine (a fresh Debian has
only the Essential packages): each program has a Debian package here, that package is in setup's list
or in the base system, and a program the sources start that is not listed here fails this test."""

import ast
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Every program run on the host -> the package scripts/setup installs for it (or a base package).
HOST_TOOLS = {
    # kgenv itself
    "tar": "tar",
    "dpkg-deb": "dpkg",
    "gpgv": "gpgv",
    "git": "git",
    "mmdebstrap": "mmdebstrap",
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "bash": "bash",
    "make": "make",
    "gcc": "gcc",
    "docker": "docker.io",
    "dockerd": "docker.io",
    "python3": "python3",
    # kgenv audit --toolchain host: the env's compiler and Kbuild on this machine (KBUILD_HOST)
    "gcc-12": "gcc",
    "ld": "binutils",
    "as": "binutils",
    "readelf": "binutils",
    "pahole": "dwarves",
    "bc": "bc",
    "bison": "bison",
    "flex": "flex",
    "openssl": "openssl",
    "perl": "perl-base",
    "awk": "mawk",
    "xz": "xz-utils",
    # the tests
    "cc": "gcc",
    "sh": "dash",
    "cp": "coreutils",
    "true": "coreutils",
    "dpkg-query": "dpkg",
    "chroot": "coreutils",
    "cpio": "cpio",
    "nm": "binutils",
    "objcopy": "binutils",
    "strip": "binutils",
    "strings": "binutils",
    "chromium": "chromium",
    # bench
    "diff": "diffutils",
}

# What runs a program the AST cannot name (argv built elsewhere), by file:function -> those programs.
DYNAMIC = {
    "kgenv/boot/qemu.py:run": {"qemu-system-x86_64"},
    "kgenv/env/sourcetree.py:git_sources": {"git"},
    "kgenv/farm/engine.py:_start": {"python3"},
    "kgenv/image/rootfs.py:build": {"mmdebstrap"},
    "kgenv/runtime/host.py:_run": {"bash", "make"},  # a stage's own command, on this machine
    "tests/browser.py:screenshot": {"chromium"},
    "tests/buildbot_cluster.py:_run": set(),  # buildbot: a pip package ([test] extra)
    "tests/test_farm.py:test_buildbot_config_is_written_whole_and_passes_buildbot_checkconfig": set(),
    "tests/test_audit_kernel.py:test_host_toolchain_in_a_private_copy_of_the_tree": {"gcc-12"},  # env's CC
    "tests/test_boot_qemu.py:test_guest_init_is_valid_busybox_sh": {"busybox"},
    "tests/test_runtime_host.py:test_kgenv_build_on_the_host_runtime_inside_the_env_image": {"python3"},
    "bench/bench_unit.py:main": {"python3"},
}

# Scripts run on the host that start programs the sources do not name: `kgenv audit --toolchain host`
# runs Kbuild (olddefconfig asks pahole's version: a missing pahole changes the fingerprint), the
# audit probe and rebuild scripts (readelf, pahole, ld, as); scripts/setup and scripts/test.
KBUILD_HOST = {"make", "gcc", "gcc-12", "ld", "as", "readelf", "pahole", "bc", "bison", "flex", "openssl", "perl"}
KBUILD_HOST |= {"awk", "xz", "sh", "bash"}
SCRIPTS = {"docker", "dockerd", "python3"}

# The base system of a fresh Debian: Essential or Priority required (checked below where dpkg is).
BASE = {"tar", "dpkg", "bash", "dash", "coreutils", "perl-base", "mawk", "diffutils"}

CALLS = {"run", "Popen", "check_output", "check_call", "call"}
SOURCES = ("kgenv", "tests", "bench")


def setup_packages() -> list[str]:
    """The need=(...) list of scripts/setup."""
    text = (REPO / "scripts" / "setup").read_text()
    body = re.search(r"^need=\((.*?)\)", text, re.S | re.M)
    assert body, "scripts/setup: no need=(...) list"
    return re.sub(r"#[^\n]*", "", body.group(1)).split()


@cache
def scanned() -> tuple[dict[str, set[str]], set[str]]:
    """(literal program -> files, call sites whose program is not a literal) over the Python sources."""
    programs: dict[str, set[str]] = {}
    dynamic = set()
    for root in SOURCES:
        for f in sorted((REPO / root).rglob("*.py")):
            rel = str(f.relative_to(REPO))
            tree = ast.parse(f.read_text())
            for fn in [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]:
                name = getattr(fn, "name", "<module>")
                for node in _own_nodes(fn):
                    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                        continue
                    owner = node.func.value
                    if node.func.attr == "which" and isinstance(owner, ast.Name) and owner.id == "shutil":
                        for a in node.args:
                            if isinstance(a, ast.Constant) and isinstance(a.value, str):
                                programs.setdefault(a.value, set()).add(rel)
                    if node.func.attr in CALLS and isinstance(owner, ast.Name) and owner.id == "subprocess":
                        argv = node.args[0] if node.args else None
                        while isinstance(argv, ast.BinOp):  # [prog, ...] + [...]
                            argv = argv.left
                        first = argv.elts[0] if isinstance(argv, (ast.List, ast.Tuple)) and argv.elts else None
                        if isinstance(first, ast.Constant) and isinstance(first.value, str):
                            programs.setdefault(first.value, set()).add(rel)
                        elif _is_kgenv_itself(argv):
                            programs.setdefault("python3", set()).add(rel)
                        else:
                            dynamic.add(f"{rel}:{name}")
    return programs, dynamic


def _own_nodes(fn):
    """The nodes of a function (or module) body, not those of functions nested in it."""
    todo = list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def _is_kgenv_itself(argv) -> bool:
    """[sys.executable, ...]: this Python (kgenv, a test helper)."""
    if not isinstance(argv, (ast.List, ast.Tuple)) or not argv.elts:
        return False
    return ast.unparse(argv.elts[0]) == "sys.executable"


def test_every_program_the_sources_start_is_listed():
    programs, dynamic = scanned()
    unlisted = {p: sorted(programs[p]) for p in programs if p not in HOST_TOOLS}
    assert not unlisted, f"add these programs to HOST_TOOLS (and their package to scripts/setup): {unlisted}"
    unknown = dynamic - set(DYNAMIC)
    assert not unknown, f"say in DYNAMIC what these call sites run: {sorted(unknown)}"
    stale = set(DYNAMIC) - dynamic
    assert not stale, f"DYNAMIC names call sites that are gone: {sorted(stale)}"


def test_every_listed_program_is_used():
    programs, _ = scanned()
    used = set(programs) | set().union(*DYNAMIC.values()) | KBUILD_HOST | SCRIPTS
    assert set(HOST_TOOLS) <= used, f"listed but never run: {sorted(set(HOST_TOOLS) - used)}"


def test_every_program_has_its_package_in_setup_or_the_base_system():
    need = set(setup_packages())
    missing = {tool: pkg for tool, pkg in HOST_TOOLS.items() if pkg not in need and pkg not in BASE}
    assert not missing, f"scripts/setup does not install: {missing}"


def test_setup_installs_no_package_nothing_uses():
    need = set(setup_packages())
    # libraries and keys Kbuild and the archive reader need, not programs
    support = {"debian-archive-keyring", "libelf-dev", "libssl-dev", "python3-pip"}
    assert need - set(HOST_TOOLS.values()) <= support, need - set(HOST_TOOLS.values()) - support


@cache
def _installed(pkg: str) -> dict[str, str]:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Essential}\t${Priority}\t${Depends}\t${Pre-Depends}", pkg],
        capture_output=True,
        text=True,
    )
    if r.returncode or "ok installed" not in r.stdout:
        return {}
    status, essential, priority, depends, pre = r.stdout.split("\t")
    names = {re.split(r"[\s:(]", d.strip())[0] for d in f"{depends},{pre}".replace("|", ",").split(",") if d.strip()}
    return {"essential": essential, "priority": priority, "depends": " ".join(sorted(names))}


def _closure(pkg: str, depth: int = 2) -> set[str]:
    """pkg and what it depends on, installed, `depth` levels down."""
    seen, level = {pkg}, {pkg}
    for _ in range(depth):
        level = {d for p in level for d in (_installed(p).get("depends") or "").split()} - seen
        seen |= level
    return seen


def _paths(tool: str) -> set[str]:
    """Where the program is: as found on PATH, its real file, the usual dirs (usr-merged or not)."""
    found = shutil.which(tool)
    paths = {found, str(Path(found).resolve())} if found else set()
    paths |= {f"{d}/{tool}" for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin")}
    paths |= {str(Path(p).resolve()) for p in list(paths) if Path(p).exists()}
    return {p for p in paths if Path(p).exists()}


@cache
def _path_owners() -> dict[str, set[str]]:
    """path -> the Debian packages that hold it, for every listed program (one dpkg-query call)."""
    paths = sorted(set().union(*(_paths(t) for t in HOST_TOOLS)))
    r = subprocess.run(["dpkg-query", "-S", *paths], capture_output=True, text=True)
    owners: dict[str, set[str]] = {}
    for line in r.stdout.splitlines():
        pkgs, sep, path = line.partition(": ")
        if sep and not line.startswith("diversion"):
            owners.setdefault(path.strip(), set()).update(p.strip().split(":")[0] for p in pkgs.split(","))
    return owners


def _owners(tool: str) -> set[str]:
    return set().union(*(_path_owners().get(p, set()) for p in _paths(tool)))


def test_the_base_packages_are_essential_or_required():
    for pkg in BASE:
        info = _installed(pkg)
        assert info, f"{pkg}: not installed, so not in the base system"
        assert info["essential"] == "yes" or info["priority"] == "required", (pkg, info)


@pytest.mark.parametrize("tool", sorted(HOST_TOOLS))
def test_the_package_of_each_program_is_the_one_that_holds_it_here(tool):
    """On this machine (set up by scripts/setup): the program comes from the package named for it,
    or from one that package pulls in (gcc -> gcc-12, dwarves -> pahole, binutils -> binutils-x86-64-*)."""
    pkg = HOST_TOOLS[tool]
    owners = _owners(tool)
    if not owners:
        # not from a package here (pyenv's python3, a docker CLI in /usr/local): the package must
        # still be installed, so a fresh machine gets the program from it
        assert _installed(pkg), f"{tool}: not from a Debian package here, and {pkg} is not installed"
        return
    assert pkg in owners or owners & _closure(pkg), (
        f"{tool}: held by {sorted(owners)}, not by {pkg} or what it depends on"
    )


@pytest.mark.archive
def test_setup_gives_a_fresh_debian_every_program(tmp_path):
    """scripts/setup's own package step in a clean minbase rootfs (mmdebstrap from this machine's
    mirror, nothing installed by hand): the base programs are there before, every listed one after,
    and pip may install kgenv into Debian's python3 (PEP 668). About 3 minutes, ~400 MB of packages."""
    from kgenv.distro import aptsources

    line = os.environ.get("KGENV_TEST_LINE", "bookworm")  # as tests/conftest.py

    if os.geteuid() != 0:
        pytest.fail("needs root (mmdebstrap --mode=root, chroot), as scripts/test runs")
    root = tmp_path / "rootfs"
    mirror = aptsources.mirrors()[0]
    try:
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet", line, str(root), f"deb {mirror} {line} main"],
            check=True,
            capture_output=True,
            timeout=900,
        )

        def chroot(script: str) -> str:
            r = subprocess.run(["chroot", str(root), "sh", "-c", script], capture_output=True, text=True, timeout=1800)
            assert r.returncode == 0, (script, r.stdout[-2000:], r.stderr[-2000:])
            return r.stdout

        base = sorted(t for t, pkg in HOST_TOOLS.items() if pkg in BASE)
        probe = "for t in {}; do command -v $t >/dev/null || echo $t; done"
        assert chroot(probe.format(" ".join(base))).split() == [], "not in the base system"
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        policy = root / "usr/sbin/policy-rc.d"  # no service starts in the chroot (docker.io's dockerd)
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        (root / "root/kgenv/scripts").mkdir(parents=True)
        shutil.copy(REPO / "scripts/setup", root / "root/kgenv/scripts/setup")
        chroot("bash /root/kgenv/scripts/setup --packages-only")
        assert chroot(probe.format(" ".join(sorted(HOST_TOOLS)))).split() == [], "not installed by scripts/setup"
        chroot("python3 -m pip --version")
        if list(root.glob("usr/lib/python3*/EXTERNALLY-MANAGED")):
            assert "PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install" in (REPO / "scripts/setup").read_text()
    finally:
        shutil.rmtree(root, ignore_errors=True)
