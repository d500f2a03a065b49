"""Docker tier: `kgenv snapshot BUILD_DIR` on a genuine O= build dir assembled from Debian's artefacts.

The build dir holds the very kernel the `env` fixture snapshotted through the Debian path, so
the two envs must agree on everything the binary determines, and share image layers.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from vendor_tree import assemble, with_cmd_files

from kgenv import manifest
from kgenv.env import kbuildcmd, sourcetree
from kgenv.env.buildtree import open_tree
from kgenv.env.vendor import marked_cmds, snapshot_build_dir
from kgenv.errors import UserError
from kgenv.progress import QUIET, Progress

pytestmark = [pytest.mark.archive, pytest.mark.docker]


def kgenv(*args):
    return subprocess.run([sys.executable, "-m", "kgenv", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def build_dir(debian_kernel, env, docker_rt):
    return with_cmd_files(assemble(debian_kernel), docker_rt, env.image.id, env.kernel.objtree, env.kernel.srctree)


@pytest.fixture(scope="module")
def vendor_env(build_dir, envs_dir, docker_rt, debian_kernel):
    """Snapshotted once, reused while its image is in the engine (like the `env` fixture)."""
    name = f"test-vendor-{debian_kernel.abi}"
    if manifest.path_of(name).exists():
        m = manifest.load(name)
        if docker_rt.image_id(m.image.id):
            return m
    return snapshot_build_dir(build_dir, lambda: docker_rt, name, None, True, Progress())


def test_vendor_env_records_what_the_debian_env_records(vendor_env, env):
    v, d = vendor_env, env
    assert v.kernel.distro == "vendor" and v.kernel.line == d.kernel.line == "bookworm"
    assert (v.kernel.build_id, v.kernel.release, v.kernel.config_sha256) == (
        d.kernel.build_id,
        d.kernel.release,
        d.kernel.config_sha256,
    )
    assert (v.kernel.srctree, v.kernel.objtree, v.kernel.source_date_epoch) == (
        d.kernel.srctree,
        d.kernel.objtree,
        d.kernel.source_date_epoch,
    )
    assert v.toolchain == d.toolchain and v.make == d.make
    assert {k: v.fingerprint[k] for k in d.fingerprint} == d.fingerprint
    for role in ("vmlinux", "vmlinuz", "config", "symvers"):
        assert v.files[role].sha256 == d.files[role].sha256, role
    assert v.files["source"].resolve().exists() and v.kernel.source_sha256 == v.files["source"].sha256


def test_vendor_env_shares_the_debian_env_image_layers(vendor_env, env, docker_rt):
    """Same toolchain and package set, same source content, config, make line and epoch: both
    layers are byte-identical, so the engine stores them once (the IDs differ by the env label)."""
    assert vendor_env.image.rootfs_sha256 == env.image.rootfs_sha256
    assert vendor_env.image.tree_sha256 == env.image.tree_sha256
    layers = [docker_rt.client.images.get(m.image.id).attrs["RootFS"]["Layers"] for m in (vendor_env, env)]
    assert layers[0] == layers[1]


def test_every_cmd_file_matched_the_image(vendor_env, build_dir):
    n = len(kbuildcmd.find(build_dir))
    assert n > 50 and vendor_env.fingerprint["kbuild_cmds"] == f"{n} compared, 0 host-tool differences"


def test_envs_verify_passes(vendor_env):
    r = kgenv("envs", "verify", vendor_env.name, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    checks = json.loads(r.stdout)["checks"]
    assert set(checks) == {"compiler", "comment", "binutils", "pahole", "config"}
    assert all(c["ok"] for c in checks.values())


def test_source_tarball_is_reproduced(vendor_env, build_dir, tmp_path):
    tree = open_tree(build_dir)
    entries = sourcetree.listing(tree.source, {str(tree.root.relative_to(tree.source))})
    again = sourcetree.write(tree.source, entries, tmp_path / "source.tar", vendor_env.kernel.source_date_epoch)
    again.path.unlink()  # 1.3 GB: not left for pytest's kept temp dirs
    assert again.sha256 == vendor_env.kernel.source_sha256


def test_kcflags_are_read_off_the_build(vendor_env, build_dir, docker_rt):
    """The marker run in the image locates KCFLAGS in the build's own bounds.s command."""
    k = vendor_env.kernel
    marked = marked_cmds(docker_rt, vendor_env.image.id, vendor_env.make, k.srctree, k.objtree)
    ours = kbuildcmd.command((build_dir / "kernel" / ".bounds.s.cmd").read_text())
    assert kbuildcmd.KCFLAGS_MARK in marked["kernel/.bounds.s.cmd"]
    assert kbuildcmd.derive_kcflags(ours, marked["kernel/.bounds.s.cmd"], "bounds") == vendor_env.make["KCFLAGS"]


def test_existing_vendor_env_is_not_replaced(vendor_env, build_dir, docker_rt):
    before = manifest.path_of(vendor_env.name).read_bytes()
    with pytest.raises(UserError, match="use --force"):
        snapshot_build_dir(build_dir, lambda: docker_rt, vendor_env.name, None, False, QUIET)
    assert manifest.path_of(vendor_env.name).read_bytes() == before


def _linked_copy(build_dir, dest):
    """A second view of the build dir: hard links (cheap), `source` pointing at the same tree."""
    shutil.copytree(
        build_dir,
        dest,
        symlinks=True,
        copy_function=os.link,
        ignore=lambda d, names: ["source"] if d == str(build_dir) else [],
    )
    (dest / "source").symlink_to(os.readlink(build_dir / "source"))
    return dest


def test_mismatching_config_is_refused_on_the_real_tree(build_dir, tmp_path):
    copy = _linked_copy(build_dir, tmp_path / "build")
    text = (copy / ".config").read_text()
    (copy / ".config").unlink()  # a new file, not the shared hard link
    (copy / ".config").write_text(text.replace("CONFIG_HZ_250=y", "# CONFIG_HZ_250 is not set"))
    os.utime(copy / ".config", (os.stat(copy / "vmlinux").st_mtime,) * 2)
    r = kgenv("snapshot", "--json", str(copy), "--name", "never-written")
    assert r.returncode == 1 and "differs from the autoconf.h" in r.stderr and "CONFIG_HZ_250" in r.stderr
    assert not manifest.path_of("never-written").exists()


def test_compiler_build_missing_from_the_archive_is_refused(build_dir, tmp_path):
    """The same kernel as if built by a gcc-12 build Debian never shipped (the package release
    rewritten in place, same length): every part agrees, and the archive lacks the compiler."""
    copy = _linked_copy(build_dir, tmp_path / "build")
    real, fake = b"12.2.0-14+deb12u1", b"12.2.0-14+deb12u9"
    mtime = os.stat(build_dir / "vmlinux").st_mtime
    for name in ("vmlinux", ".config", "include/generated/autoconf.h", "include/generated/compile.h"):
        p = copy / name
        data = p.read_bytes()
        assert real in data, name
        p.unlink()  # a new file, not the shared hard link
        p.write_bytes(data.replace(real, fake))
        os.utime(p, (mtime, mtime))
    r = kgenv("snapshot", "--json", str(copy), "--name", "never-written")
    assert r.returncode == 1, r.stderr
    assert "gcc-12=12.2.0-14+deb12u9: the compiler build of" in r.stderr and "is not in bookworm at" in r.stderr
    assert "12.2.0-14+deb12u1" in r.stderr  # what the archive does have
    assert not manifest.path_of("never-written").exists()
