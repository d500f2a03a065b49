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


def test_env_resolves_the_recorded_vmlinuz_and_checks_its_hash(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from kgenv import manifest
    from kgenv.cli import boot as cli_boot
    from kgenv.errors import ToolError
    from kgenv.fsutil import sha256_file
    from kgenv.progress import QUIET

    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(b"kernel image")
    ref = SimpleNamespace(resolve=lambda: vmlinuz, sha256=sha256_file(vmlinuz))
    files = {"vmlinuz": ref}
    env = SimpleNamespace(files=files, file_ref=files.__getitem__, kernel=SimpleNamespace(line="bookworm", release="x"))
    monkeypatch.setattr(manifest, "load", lambda name: env)
    assert cli_boot._kernel_of(None, "bookworm-x", QUIET) == vmlinuz
    vmlinuz.write_bytes(b"changed")
    with pytest.raises(ToolError, match="sha256"):
        cli_boot._kernel_of(None, "bookworm-x", QUIET)
