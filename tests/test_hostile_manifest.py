"""Hostile input: a manifest names its image by content digest only, and every recorded shipped file
is checked against its sha256 wherever a stage reads it (build, verify, boot-test, restore, farm)."""

import os
import re
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


def test_short_image_ids_as_envs_list_prints_them():
    from kgenv.cli.build import same_image

    full = "sha256:" + "ab12" * 16
    assert same_image(full, full) and same_image(full[7:], full) and same_image(full[7:19], full)
    assert same_image("sha256:" + full[7:19], full)
    assert not same_image(full[7:18], full)  # 11 digits: too short to name one image
    assert not same_image("cd" * 6, full) and not same_image("kgenv/x:env", full)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda m: replace(m, kernel=replace(m.kernel, source_date_epoch=True)),
            r"\[kernel\].source_date_epoch: expected int",
        ),
        (lambda m: replace(m, image=replace(m.image, tag="no-colon")), r"image.tag 'no-colon' is not a REPOSITORY:TAG"),
        (lambda m: replace(m, fingerprint={}), r"\[fingerprint\] lacks cc_version_text"),
    ],
)
def test_manifest_values_every_command_relies_on(tmp_path, monkeypatch, edit, message):
    """envs list/verify/restore read these without looking: bad ones are a one-line error at load."""
    monkeypatch.setenv("KGENV_ENVS", str(tmp_path))
    (tmp_path / "bad.toml").write_text(edit(sample("bad")).to_toml())
    for args in (["envs", "list"], ["envs", "show", "bad"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert re.search(message, r.stderr)


@pytest.mark.parametrize("opt", [["-j", "0"], ["-j", "-1"], ["-j", "65"]])
def test_job_counts_out_of_range_are_usage_errors(tmp_path, opt):
    diff = tmp_path / "x.diff"
    diff.write_text("")
    r = CliRunner().invoke(cli, ["build", str(diff), "--env", "x", "-o", str(tmp_path / "o"), *opt])
    assert r.exit_code == 2 and "-j" in r.stderr and not (tmp_path / "o").exists()


def test_verify_refuses_a_fifo_instead_of_waiting(tmp_path):
    fifo = tmp_path / "vmlinux"
    os.mkfifo(fifo)
    obj = tmp_path / "x.o"
    os.mkfifo(obj)
    r = CliRunner().invoke(cli, ["verify", "--binary", str(fifo), str(obj)])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [f"kgenv: {fifo}: not a regular file, not an ELF object"]
