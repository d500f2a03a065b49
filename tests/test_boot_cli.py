"""`kgenv boot-test` input errors: exit 2 material, raised before anything boots."""

import pytest
from click.testing import CliRunner

from kgenv.cli_boot import boot_test_command
from kgenv.errors import UserError


@pytest.fixture
def not_a_module(tmp_path):
    path = tmp_path / "x.ko"
    path.write_bytes(b"not an ELF file")
    return path


def test_needs_exactly_one_kernel_source(not_a_module):
    result = CliRunner().invoke(boot_test_command, [str(not_a_module)])
    assert isinstance(result.exception, UserError)
    assert "--kernel" in str(result.exception)


def test_rejects_a_file_that_is_no_module(not_a_module, tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"")
    result = CliRunner().invoke(boot_test_command, [str(not_a_module), "--kernel", str(kernel)])
    assert isinstance(result.exception, UserError)
    assert result.exception.exit_code == 2
    assert "not a readable kernel module" in str(result.exception)
