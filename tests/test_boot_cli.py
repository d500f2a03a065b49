"""`kgenv boot-test` input errors: exit 2 material, raised before anything boots."""

import pytest
from click.testing import CliRunner

from kgenv.cli import cli


@pytest.fixture
def not_a_module(tmp_path):
    path = tmp_path / "x.ko"
    path.write_bytes(b"not an ELF file")
    return path


def test_needs_exactly_one_kernel_source(not_a_module):
    result = CliRunner().invoke(cli, ["boot-test", str(not_a_module)])
    assert result.exit_code == 2
    assert result.stderr.startswith("kgenv: ") and "--kernel" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_rejects_a_file_that_is_no_module(not_a_module, tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"")
    result = CliRunner().invoke(cli, ["boot-test", str(not_a_module), "--kernel", str(kernel)])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith("kgenv: ") and "not a readable kernel module" in result.stderr


def _env_with_vmlinuz(tmp_path, monkeypatch, distro="debian"):
    """An env manifest in a private envs dir whose vmlinuz lies in a private cache."""
    from sample_manifest import saved_env

    m = saved_env(tmp_path, monkeypatch, "debian-6.1.0-1-amd64", {"vmlinuz": b"kernel image"}, distro=distro)
    return m, m.file_ref("vmlinuz").resolve()


def test_env_vmlinuz_is_checked_by_its_recorded_hash(tmp_path, monkeypatch, not_a_module):
    from kgenv.env.lifecycle import restore_files
    from kgenv.errors import ToolError
    from kgenv.progress import QUIET

    m, vmlinuz = _env_with_vmlinuz(tmp_path, monkeypatch)
    restore_files(m, None, QUIET, ["vmlinuz"])  # as recorded: nothing to fetch, nothing raised
    vmlinuz.write_bytes(b"changed")
    with pytest.raises(ToolError, match="sha256 differs"):
        restore_files(m, None, QUIET, ["vmlinuz"])
    r = CliRunner().invoke(cli, ["boot-test", str(not_a_module), "--env", m.name])
    assert r.exit_code == 2 and "sha256 differs" in r.stderr.splitlines()[-1]


def test_a_vendor_envs_lost_file_cannot_be_fetched(tmp_path, monkeypatch):
    from kgenv.env.lifecycle import restore_files
    from kgenv.errors import UserError
    from kgenv.progress import QUIET

    m, vmlinuz = _env_with_vmlinuz(tmp_path, monkeypatch, distro="vendor")
    vmlinuz.unlink()
    with pytest.raises(UserError, match="not in the cache; snapshot its build dir again"):
        restore_files(m, None, QUIET)
    with pytest.raises(UserError, match=r"records no \[files.vmlinux\]"):
        restore_files(m, None, QUIET, ["vmlinux"])
