"""The newc cpio writer: byte layout, and round trips through the system cpio."""

import stat
import subprocess

import pytest

from kgenv.boot.initramfs import Archive


def _archive() -> Archive:
    a = Archive()
    a.add_file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755)
    a.add_symlink("bin/sh", "busybox")
    a.add_file("/kgenv/env", b"NAME=x\n")
    a.add_file("kgenv/empty", b"")
    a.add_file("kgenv/odd", b"abc")  # not a multiple of 4: needs padding
    a.add_dir("proc")
    a.add_char_device("dev/console", 5, 1)
    return a


def test_layout_is_aligned_and_ends_with_trailer():
    data = _archive().to_bytes()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data[-128:]


def test_same_input_same_bytes():
    assert _archive().to_bytes() == _archive().to_bytes()


def test_parents_are_added_first():
    a = Archive()
    a.add_file("a/b/c.txt", b"x")
    assert a.paths == ["a", "a/b", "a/b/c.txt"]


@pytest.mark.parametrize("bad", ["", "/", "../etc/passwd", "a/../../b"])
def test_bad_paths_refused(bad):
    with pytest.raises(ValueError):
        Archive().add_file(bad, b"")


def test_cpio_lists_every_member(tmp_path):
    path = _archive().write(tmp_path / "i.cpio")
    out = subprocess.run(
        ["cpio", "-t", "-v", "-F", str(path)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in out]
    assert names == [
        "bin",
        "bin/busybox",
        "bin/sh",
        "kgenv",
        "kgenv/env",
        "kgenv/empty",
        "kgenv/odd",
        "proc",
        "dev",
        "dev/console",
    ]
    console = next(line for line in out if line.endswith("dev/console"))
    assert console.startswith("crw-------") and "5," in console


def test_cpio_extracts_contents_modes_and_links(tmp_path):
    a = _archive()
    path = a.write(tmp_path / "i.cpio")
    dest = tmp_path / "x"
    dest.mkdir()
    # Device nodes need root to create; the listing test covers them.
    subprocess.run(
        ["cpio", "-i", "-d", "--no-absolute-filenames", "-F", str(path), "--quiet", "bin/*", "kgenv/*", "proc"],
        cwd=dest,
        check=True,
    )
    assert (dest / "bin/busybox").read_bytes() == b"\x7fELF" + bytes(range(256)) * 3
    assert stat.S_IMODE((dest / "bin/busybox").stat().st_mode) == 0o755
    assert (dest / "bin/sh").is_symlink() and str((dest / "bin/sh").readlink()) == "busybox"
    assert (dest / "kgenv/env").read_text() == "NAME=x\n"
    assert (dest / "kgenv/empty").read_bytes() == b""
    assert (dest / "kgenv/odd").read_bytes() == b"abc"
    assert (dest / "proc").is_dir()
