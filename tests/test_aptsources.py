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
    apt = _apt(
        tmp_path,
        {
            "sources.list.d/debian.sources": (
                "Types: deb\nURIs: file:///srv/mirror/debian\nSuites: bookworm bookworm-updates\n"
                "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
                "Types: deb\nURIs: file:///srv/sec/debian-security/\nSuites: bookworm-security\n"
                "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
            "sources.list.d/other.sources": "Types: deb\nURIs: file:///srv/vendor/apt\nSuites: x\n",
        },
    )
    assert aptsources.mirrors(apt) == ("file:///srv/mirror/debian", "file:///srv/sec/debian-security")


def test_one_line_format_and_override(tmp_path, monkeypatch):
    apt = _apt(tmp_path, {"sources.list": "# c\ndeb [arch=amd64] file:///srv/m/debian bookworm main\n"})
    monkeypatch.delenv("KGENV_SECURITY_MIRROR", raising=False)
    monkeypatch.setenv("KGENV_MIRROR", "file:///srv/override/debian")
    assert aptsources.mirrors(apt) == ("file:///srv/override/debian", "file:///srv/override/debian-security")


def test_no_mirror_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KGENV_MIRROR", raising=False)
    with pytest.raises(UserError, match="no Debian mirror"):
        aptsources.mirrors(_apt(tmp_path, {}))
