"""Docker tier: Kbuild in the env image builds a livepatch module the shipped kernel accepts."""

import pytest
from elftools.elf.elffile import ELFFile

pytestmark = [pytest.mark.archive, pytest.mark.docker]


def _modinfo(ko) -> dict[str, str]:
    with open(ko, "rb") as f:
        data = ELFFile(f).get_section_by_name(".modinfo").data()
    return dict(f.decode().partition("=")[::2] for f in data.split(b"\0") if b"=" in f)


def test_sample_module_matches_the_running_kernel(livepatch_sample_ko, env):
    info = _modinfo(livepatch_sample_ko)
    assert info["vermagic"].startswith(env.kernel.release + " SMP")
    assert info["livepatch"] == "Y"
    assert livepatch_sample_ko.name == "livepatch-sample.ko"
