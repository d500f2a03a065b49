"""Hostile input: a manifest names its image by content digest only, and every recorded shipped file
is checked against its sha256 wherever a stage reads it (build, verify, boot-test, restore, farm)."""

from dataclasses import replace

import pytest
from click.testing import CliRunner
from sample_manifest import sample

from kgenv import fsutil, manifest
from kgenv.cli import cli
from kgenv.env.lifecycle import restore_files
from kgenv.errors import ToolError, UserError
from kgenv.farm.worker import fetch_files
from kgenv.fsutil import sha256_cached, sha256_file
from kgenv.manifest import FileRef
from kgenv.progress import QUIET

GOOD_ID = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "image_id",
    [
        "kgenv/debian-6.1.0-57-amd64:env",  # a mutable tag
        "sha256:" + "ab" * 31,  # too short
        "sha256:" + "AB" * 32,  # not lower-case hex
        "sha256:" + "0" * 64 + "\n",
        "sha512:" + "ab" * 64,
        GOOD_ID[7:],  # the bare digest
    ],
)
def test_only_a_sha256_digest_is_an_image_identity(image_id):
    m = sample()
    text = replace(m, image=replace(m.image, id=image_id)).to_toml()
    with pytest.raises(UserError, match=r"image.id .* is not an image ID \(sha256:<64 hex>\)") as e:
        manifest.parse(text, "envs/x.toml")
    assert str(e.value).startswith("envs/x.toml: ") and "\n" not in str(e.value)


def test_a_digest_id_parses():
    m = sample()
    assert manifest.parse(replace(m, image=replace(m.image, id=GOOD_ID)).to_toml(), "x").image.id == GOOD_ID


def test_a_tag_as_id_is_an_error_of_every_command(tmp_path, monkeypatch):
    monkeypatch.setenv("KGENV_ENVS", str(tmp_path))
    m = sample("tagged")
    (tmp_path / "tagged.toml").write_text(replace(m, image=replace(m.image, id="kgenv/tagged:env")).to_toml())
    r = CliRunner().invoke(cli, ["envs", "show", "tagged"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        f"kgenv: {tmp_path / 'tagged.toml'}: image.id 'kgenv/tagged:env' is not an image ID (sha256:<64 hex>); "
        "a tag is no identity"
    ]


# -- the recorded files' hashes ------------------------------------------------------------------


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """An env whose vmlinux is in the cache with its true hash; and another ABI's vmlinux beside it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KGENV_CACHE", str(cache))
    monkeypatch.setenv("KGENV_ENVS", str(tmp_path / "envs"))
    ours, other = cache / "k" / "a" / "vmlinux", cache / "k" / "b" / "vmlinux"
    for f, data in ((ours, b"\x7fELF ours"), (other, b"\x7fELF another ABI")):
        f.parent.mkdir(parents=True)
        f.write_bytes(data)
    m = replace(sample("hashed"), files={"vmlinux": FileRef("k/a/vmlinux", sha256_file(ours), "linux-image-dbg")})
    return m, ours, other


def test_a_recorded_file_with_its_hash_is_returned(cached):
    m, ours, _ = cached
    assert m.file("vmlinux") == ours


@pytest.mark.parametrize("how", ["zeroed", "other-abi", "changed"])
def test_a_file_that_is_not_the_recorded_one_is_refused(cached, how):
    m, ours, other = cached
    if how == "zeroed":
        m = replace(m, files={"vmlinux": replace(m.files["vmlinux"], sha256="0" * 64)})
    elif how == "other-abi":
        m = replace(m, files={"vmlinux": replace(m.files["vmlinux"], path="k/b/vmlinux")})
    else:
        ours.write_bytes(b"\x7fELF tampered")
    with pytest.raises(UserError) as e:
        m.file("vmlinux")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(other if how == "other-abi" else ours) + ": ")
    assert f"sha256 differs from env {m.name}'s files.vmlinux" in msg
    assert msg.endswith(f"run `kgenv envs restore {m.name}`")


def test_a_cache_hit_does_not_hash_again(cached, monkeypatch):
    m, ours, _ = cached
    calls = []
    real = fsutil.sha256_file
    monkeypatch.setattr(fsutil, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    m.file("vmlinux")
    m.file("vmlinux")
    sha256_cached(ours)
    assert calls == [ours]  # hashed once, remembered in the cache dir
    assert list((fsutil.cache_dir() / "sha256").glob("*.json"))
    ours.write_bytes(b"\x7fELF tampered, same inode")  # size, mtime and ctime change: hashed again
    with pytest.raises(UserError, match="sha256 differs"):
        m.file("vmlinux")
    assert len(calls) == 2


def test_a_forged_cache_entry_for_another_stat_is_not_used(cached, monkeypatch):
    m, ours, _ = cached
    m.file("vmlinux")
    for entry in (fsutil.cache_dir() / "sha256").glob("*.json"):
        entry.write_text('{"key": "[]", "sha256": "' + "0" * 64 + '"}')  # a key of another file
    assert sha256_cached(ours) == sha256_file(ours)


def test_verify_env_checks_the_hash(cached, tmp_path):
    m, ours, _ = cached
    m = replace(m, files={"vmlinux": replace(m.files["vmlinux"], sha256="0" * 64)})
    manifest.save(m)
    obj = tmp_path / "x.o"
    obj.write_bytes(b"")
    r = CliRunner().invoke(cli, ["verify", "--env", m.name, str(obj)])
    assert r.exit_code == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"kgenv: {ours}: sha256 differs from env {m.name}'s files.vmlinux")


def test_restore_and_farm_use_the_same_cached_check(cached, monkeypatch):
    m, ours, _ = cached
    calls = []
    real = fsutil.sha256_file
    monkeypatch.setattr(fsutil, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    restore_files(m, None, QUIET)
    fetch_files(m)
    m.file("vmlinux")
    assert calls == [ours]
    bad = replace(m, files={"vmlinux": replace(m.files["vmlinux"], sha256="0" * 64)})
    with pytest.raises(ToolError, match=f"sha256 differs from env {m.name}'s files.vmlinux"):
        restore_files(bad, None, QUIET)
    with pytest.raises(ToolError, match=f"sha256 differs from env {m.name}'s files.vmlinux"):
        fetch_files(bad)  # present on this host, but not the recorded file: a farm job must not use it
