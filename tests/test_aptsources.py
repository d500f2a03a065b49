import pytest

from kgenv.distro import aptsources
from kgenv.errors import UserError


def _apt(tmp_path, files):
    (tmp_path / "sources.list.d").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_deb822_and_security(tmp_path, monkeypatch):
    monkeypatch.delenv("KGENV_MIRROR", raising=False)
    monkeypatch.delenv("KGENV_SECURITY_MIRROR", raising=False)
    apt = _apt(tmp_path, {"sources.list.d/debian.sources": (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://sec.example/debian-security/\nSuites: bookworm-security\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"),
        "sources.list.d/other.sources": "Types: deb\nURIs: https://vendor.example/apt\nSuites: x\n"})
    assert aptsources.mirrors(apt) == ("http://mirror.example/debian", "http://sec.example/debian-security")


def test_one_line_format_and_override(tmp_path, monkeypatch):
    apt = _apt(tmp_path, {"sources.list": "# c\ndeb [arch=amd64] http://m.example/debian bookworm main\n"})
    monkeypatch.delenv("KGENV_SECURITY_MIRROR", raising=False)
    monkeypatch.setenv("KGENV_MIRROR", "http://override.example/debian")
    assert aptsources.mirrors(apt) == ("http://override.example/debian", "http://override.example/debian-security")


def test_no_mirror_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KGENV_MIRROR", raising=False)
    with pytest.raises(UserError, match="no Debian mirror"):
        aptsources.mirrors(_apt(tmp_path, {}))
