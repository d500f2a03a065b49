"""Manifest schema: round trip, validation of untrusted manifests, no silent replacement."""

from dataclasses import replace

import pytest
from sample_manifest import sample

from kgenv import manifest
from kgenv.errors import UserError


def test_round_trip():
    m = sample()
    assert manifest.parse(m.to_toml(), "x.toml") == m


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.replace("schema = 1", "schema = 9"), "schema 9"),
        (
            lambda t: t.replace("[kernel]\n", "[kernel]\nx = 1\n").replace('release = "6.1.0-1-amd64"\n', ""),
            "missing key",
        ),
        (lambda t: t.replace('path = "kernels/x/vmlinux"', 'path = "../../etc/passwd"'), "escapes the cache"),
        (lambda t: t.replace('path = "kernels/x/vmlinux"', 'path = "/etc/passwd"'), "escapes the cache"),
        (lambda t: t.replace("source_date_epoch = 1700000000", 'source_date_epoch = "soon"'), "expected int"),
        (lambda t: t + "\n[[[", "not valid TOML"),
        (lambda t: t.replace('name = "debian-6.1.0-1-amd64"', 'name = "../evil"'), "name missing or invalid"),
    ],
)
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
