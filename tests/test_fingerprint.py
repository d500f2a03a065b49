"""Fingerprint reading and toolchain-string comparison on small inputs."""

import pytest

from kgenv.env.fingerprint import make_variables, read_config, read_vmlinux
from kgenv.env.toolchain import CompilerId
from kgenv.errors import UserError
from kgenv.image import rootfs
from kgenv.runtime import dockerarchive


def test_compiler_strings_compare_by_meaning():
    deb = CompilerId.parse("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0")
    assert (deb.program, deb.package_version, deb.upstream) == ("gcc-12", "12.2.0-14+deb12u1", "12.2.0")
    older = CompilerId.parse("gcc-12 (Debian 12.2.0-14) 12.2.0")
    assert deb.differences(older) == ["package release 12.2.0-14+deb12u1 vs 12.2.0-14"]
    assert CompilerId.parse("gcc (GCC) 12.2.0").differences(CompilerId.parse("gcc (GNU) 12.2.0")) == []
    assert "compiler version 12.2.0 vs 11.3.0" in deb.differences(CompilerId.parse("gcc-11 (Debian 11.3.0-12) 11.3.0"))
    with pytest.raises(UserError):
        CompilerId.parse("not a compiler")


def test_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "config"
    bad.write_text("CONFIG_FOO=y\n")
    with pytest.raises(UserError, match=f"{bad}: not a kernel .config"):
        read_config(bad)
    with pytest.raises(UserError, match="cannot read"):
        read_config(tmp_path / "missing")


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not an ELF"), (b"\x7fELF\x02\x01\x01" + b"\0" * 9, "not an ELF"), (b"MZ" * 100, "not an ELF")],
)
def test_garbled_vmlinux(tmp_path, content, message):
    p = tmp_path / "vmlinux"
    p.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_vmlinux(p)


def test_non_kernel_elf_has_no_banner(tmp_path):
    import shutil

    p = tmp_path / "true"
    shutil.copy(shutil.which("true"), p)
    with pytest.raises(UserError, match="no 'Linux version' banner"):
        read_vmlinux(p)


def test_make_variables_from_generated_headers():
    out = make_variables(
        {"CC_VERSION_TEXT": "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"},
        {"LINUX_COMPILE_BY": "debian-kernel", "LINUX_COMPILE_HOST": "lists.debian.org"},
        {"UTS_VERSION": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)"},
        "6.1.0-57-amd64",
        "/build/x",
    )
    assert out["CC"] == "gcc-12" and out["KBUILD_BUILD_USER"] == "debian-kernel"
    assert out["KBUILD_BUILD_VERSION_TIMESTAMP"] == "Debian 6.1.192-3 (2026-11-26)"
    assert out["KCFLAGS"] == "-fdebug-prefix-map=/build/x/="


def test_image_config_is_a_pure_function_of_inputs():
    a = dockerarchive.image_config(["sha256:1"], 1700000000, {"A": "1"}, {"l": "x"}, "/w")
    assert a == dockerarchive.image_config(["sha256:1"], 1700000000, {"A": "1"}, {"l": "x"}, "/w")
    assert a != dockerarchive.image_config(["sha256:2"], 1700000000, {"A": "1"}, {"l": "x"}, "/w")
    assert b'"created":"2023-11-14T22:13:20Z"' in a


def test_preferences_pin_every_package():
    text = rootfs.preferences({"libc6": "2.36-9", "gcc-12": "12.2.0-14+deb12u1"})
    assert text.index("Package: gcc-12") < text.index("Package: libc6")
    assert text.count("Pin-Priority: 1001") == 2 and "Pin: version 12.2.0-14+deb12u1" in text
