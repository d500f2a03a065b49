"""Real archive tier: resolution and fetching against the machine's own Debian mirror."""

import pytest

from kgenv.distro import debian
from kgenv.errors import UserError

pytestmark = pytest.mark.archive


def test_current_kernel_is_complete(debian_kernel):
    kp = debian_kernel.packages
    assert {p.version for p in kp.all()} == {kp.version}
    assert debian_kernel.vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert "CONFIG_CC_VERSION_TEXT=" in debian_kernel.config.read_text()
    assert debian_kernel.vmlinuz.stat().st_size > 1_000_000


def test_exact_abi_resolves_to_same(debian_kernel):
    kp = debian.resolve(debian_kernel.abi)
    assert (kp.abi, kp.version) == (debian_kernel.abi, debian_kernel.version)


def test_unknown_abi_and_line_are_user_errors():
    with pytest.raises(UserError, match="no kernel"):
        debian.resolve("6.1.0-9999-amd64")
    with pytest.raises(UserError, match="neither a Debian release"):
        debian.resolve("hamm")


def test_other_release_line_resolves():
    kp = debian.resolve("trixie")
    assert kp.abi.startswith("6.12.") and kp.line == "trixie"
