"""Manifest schema: round trip, validation of untrusted manifests, no silent replacement."""

from dataclasses import replace

import pytest

from kgenv import manifest
from kgenv.errors import UserError
from kgenv.manifest import FileRef, Image, Kernel, Manifest


def sample(name="debian-6.1.0-1-amd64") -> Manifest:
    return Manifest(
        name=name,
        kernel=Kernel("debian", "bookworm", "6.1.0-1-amd64", "6.1.1-1", "ab" * 20, 'Linux version "q" \\ x',
                      "/build/x", "debian/build", "linux-source-6.1=6.1.1-1", "0" * 64, "1" * 64, 1700000000),
        fingerprint={"cc_version_text": "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"},
        make={"CC": "gcc-12", "KBUILD_BUILD_VERSION_TIMESTAMP": "Debian 6.1.1-1 (2023-01-01)"},
        toolchain={"gcc-12": "12.2.0-14+deb12u1"},
        image=Image("sha256:" + "2" * 64, f"kgenv/{name}:env", "bookworm", "bc,gcc-12", "", "", "", 1),
        packages={"libc6": "2.36-9+deb12u14", "g++": "1"},
        files={"vmlinux": FileRef("kernels/x/vmlinux", "3" * 64, "linux-image-dbg=1")},
        kgenv_version="0.1.0")


def test_round_trip():
    m = sample()
    assert manifest.parse(m.to_toml(), "x.toml") == m


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.replace("schema = 1", "schema = 9"), "schema 9"),
    (lambda t: t.replace('[kernel]\n', '[kernel]\nx = 1\n').replace('release = "6.1.0-1-amd64"\n', ""), "missing key"),
    (lambda t: t.replace('path = "kernels/x/vmlinux"', 'path = "../../etc/passwd"'), "escapes the cache"),
    (lambda t: t.replace('path = "kernels/x/vmlinux"', 'path = "/etc/passwd"'), "escapes the cache"),
    (lambda t: t.replace("source_date_epoch = 1700000000", 'source_date_epoch = "soon"'), "expected int"),
    (lambda t: t + "\n[[[", "not valid TOML"),
    (lambda t: t.replace('name = "debian-6.1.0-1-amd64"', 'name = "../evil"'), "name missing or invalid"),
])
def test_bad_manifests_are_one_line_errors(mutate, message):
    with pytest.raises(UserError, match=message) as e:
        manifest.parse(mutate(sample().to_toml()), "envs/bad.toml")
    assert str(e.value).startswith("envs/bad.toml") and "\n" not in str(e.value)


def test_save_never_replaces_silently(tmp_path, monkeypatch):
    monkeypatch.setenv("KGENV_ENVS", str(tmp_path))
    m = sample()
    manifest.save(m)
    with pytest.raises(UserError, match="use --force"):
        manifest.save(replace(m, kgenv_version="9"))
    assert manifest.load(m.name).kgenv_version == "0.1.0"
    manifest.save(replace(m, kgenv_version="9"), force=True)
    assert manifest.load(m.name).kgenv_version == "9"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_env_names_cannot_escape(tmp_path, monkeypatch):
    monkeypatch.setenv("KGENV_ENVS", str(tmp_path))
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(UserError):
            manifest.path_of(bad)
