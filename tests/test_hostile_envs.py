"""Hostile input to `kgenv envs import/export`: a file that is not an env export never reaches the
engine and is one line; an export into a missing directory or onto a full disk is one line and
leaves no temp file behind."""

import errno
import hashlib
import io
import json
import os
import tarfile
from dataclasses import replace

import pytest
from click.testing import CliRunner
from sample_manifest import sample, saved_env

from kgenv import fsutil, manifest
from kgenv.cli import cli
from kgenv.cli import envs as cli_envs
from kgenv.env import lifecycle
from kgenv.errors import UserError

CONFIG = b'{"rootfs":{"type":"layers","diff_ids":[]}}'
IMAGE_ID = "sha256:" + hashlib.sha256(CONFIG).hexdigest()


def add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def docker_archive(path, config=CONFIG, entries=None):
    """What `docker save` writes for one image: its config (whose sha256 is the ID), layers, manifest.json."""
    digest = hashlib.sha256(config).hexdigest()
    if entries is None:
        entries = [{"Config": f"{digest}.json", "RepoTags": None, "Layers": ["l1/layer.tar"]}]
    with tarfile.open(path, "w") as tar:
        add(tar, f"{digest}.json", config)
        add(tar, "l1/layer.tar", b"")
        add(tar, "manifest.json", json.dumps(entries).encode())


class FakeEngine:
    """save() writes a docker-archive (or fails after `fail_after` bytes); load() is recorded."""

    name = "fake"

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after
        self.loaded: list = []
        self.tags: list = []

    def image_id(self, ref):
        return IMAGE_ID

    def save(self, image_id, dest):
        docker_archive(dest)
        if self.fail_after is not None:
            with open(dest, "r+b") as f:
                f.truncate(self.fail_after)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def load(self, archive):
        self.loaded.append(archive)
        return IMAGE_ID

    def tag(self, image_id, repo, tag):
        self.tags.append((image_id, repo, tag))


@pytest.fixture
def engine(tmp_path, monkeypatch):
    monkeypatch.setenv("KGENV_ENVS", str(tmp_path / "envs"))
    rt = FakeEngine()
    monkeypatch.setattr(cli_envs, "runtime", lambda: rt)
    return rt


def env_manifest(image_id=IMAGE_ID, name="imported-env"):
    m = sample(name)
    return replace(m, image=replace(m.image, id=image_id))


def export_file(path, m=None, config=CONFIG, entries=None, manifest_bytes=None):
    docker_archive(path, config, entries)
    with tarfile.open(path, "a") as tar:
        add(tar, "kgenv-manifest.toml", manifest_bytes or (m or env_manifest()).to_toml().encode())
    return path


def kgenv(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r, r.stderr.strip().splitlines()


# -- import ---------------------------------------------------------------------------------------


def test_a_well_formed_export_is_loaded_and_saved(tmp_path, engine):
    r, _ = kgenv("envs", "import", export_file(tmp_path / "env.tar"))
    assert r.exit_code == 0, (r.output, r.exception)
    assert engine.loaded == [tmp_path / "env.tar"] and manifest.load("imported-env").image.id == IMAGE_ID


def not_an_export(tmp_path, kind):
    p = tmp_path / "x.tar"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("hello\n")
    elif kind == "truncated":
        export_file(p)
        p.write_bytes(p.read_bytes()[:700])
    elif kind == "random tar":
        with tarfile.open(p, "w") as tar:
            add(tar, "README", b"not an env\n")
    elif kind == "manifest only":
        with tarfile.open(p, "w") as tar:
            add(tar, "kgenv-manifest.toml", env_manifest().to_toml().encode())
    elif kind == "latin-1 manifest":
        export_file(p, manifest_bytes=b'name = "caf\xe9"\n')
    elif kind == "two images":
        export_file(p, entries=[{"Config": "a.json", "Layers": []}, {"Config": "b.json", "Layers": []}])
    elif kind == "manifest.json not a list":
        export_file(p, entries="{")
    elif kind == "missing layer":
        export_file(p, entries=[{"Config": f"{IMAGE_ID[7:]}.json", "Layers": ["gone/layer.tar"]}])
    elif kind == "another image":
        export_file(p, config=b'{"other":1}')
    elif kind == "manifest is a directory":
        with tarfile.open(p, "w") as tar:
            info = tarfile.TarInfo("kgenv-manifest.toml")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    elif kind == "fifo":
        p = tmp_path / "fifo"
        os.mkfifo(p)  # reading it would block forever
    return p


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("empty", "not a kgenv env export (not a tar archive, or a truncated one)"),
        ("text", "not a kgenv env export (not a tar archive, or a truncated one)"),
        ("truncated", "not a kgenv env export ("),
        ("random tar", "not a kgenv env export (no kgenv-manifest.toml in it)"),
        ("manifest only", "not a kgenv env export (no manifest.json in it)"),
        ("latin-1 manifest", "kgenv-manifest.toml is not UTF-8 text"),
        ("two images", "not a kgenv env export (its manifest.json does not describe one image)"),
        ("manifest.json not a list", "not a kgenv env export (its manifest.json does not describe one image)"),
        ("missing layer", "not a kgenv env export (no gone/layer.tar in it)"),
        ("another image", "its image is sha256:"),
        ("manifest is a directory", "not a kgenv env export (kgenv-manifest.toml is not a regular file)"),
        ("fifo", "not a regular file"),
    ],
)
def test_what_is_not_an_export_never_reaches_the_engine(tmp_path, engine, kind, problem, monkeypatch):
    archive = not_an_export(tmp_path, kind)
    monkeypatch.setattr(cli_envs, "runtime", lambda: pytest.fail("the engine was asked about a non-export"))
    r, lines = kgenv("envs", "import", archive)
    assert r.exit_code == 2, (r.output, r.exception)
    assert len(lines) == 1 and lines[0].startswith(f"kgenv: {archive}: {problem}"), lines
    assert engine.loaded == [] and not (tmp_path / "envs").exists()


# -- export ---------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path, monkeypatch, engine):
    m = saved_env(tmp_path, monkeypatch, "export-env", {"symvers": ""})
    # saved_env records its own image id; the fake engine's archive carries IMAGE_ID
    manifest.save(replace(m, image=replace(m.image, id=IMAGE_ID)), force=True)
    return manifest.load(m.name)


def test_export_then_import_round_trips(tmp_path, saved, engine):
    r, _ = kgenv("envs", "export", saved.name, "-o", tmp_path / "env.tar")
    assert r.exit_code == 0, (r.output, r.exception)
    assert os.stat(tmp_path / "env.tar").st_mode & 0o777 == 0o644
    assert lifecycle.read_export(tmp_path / "env.tar") == saved
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("where", ["missing/env.tar", "a-file/env.tar", "."])
def test_export_into_a_missing_directory_is_one_line_before_the_engine(tmp_path, saved, where, monkeypatch):
    (tmp_path / "a-file").write_text("")
    dest = tmp_path / where
    monkeypatch.setattr(cli_envs, "runtime", lambda: pytest.fail("the engine was asked before -o was checked"))
    r, lines = kgenv("envs", "export", saved.name, "-o", dest)
    assert r.exit_code == 2, (r.output, r.exception)
    assert len(lines) == 1 and lines[0].startswith(f"kgenv: -o {dest}: ")


def test_export_onto_a_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path, saved, engine):
    engine.fail_after = 4096
    dest = tmp_path / "out" / "env.tar"
    dest.parent.mkdir()
    r, lines = kgenv("envs", "export", saved.name, "-o", dest)
    assert r.exit_code == 2, (r.output, r.exception)
    assert lines == [f"kgenv: -o {dest}: cannot write the export (No space left on device); nothing was left there"]
    assert list(dest.parent.iterdir()) == []


def test_an_interrupted_export_leaves_no_temp_file(tmp_path, saved, engine, monkeypatch):
    def interrupted(image_id, dest):
        dest.write_bytes(b"x" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lifecycle.export(engine, saved, tmp_path / "env.tar")
    assert [p.name for p in tmp_path.iterdir() if "env.tar" in p.name] == []


def test_write_atomic_on_a_full_disk_leaves_no_temp_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fsutil.os, "fsync", full)
    with pytest.raises(OSError):
        fsutil.write_atomic(tmp_path / "report.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_read_export_is_a_user_error_not_a_traceback(tmp_path):
    with pytest.raises(UserError):
        lifecycle.read_export(export_file(tmp_path / "x.tar", config=b"{}"))


def test_a_cache_copy_that_fails_leaves_no_temp_file(tmp_path, monkeypatch):
    from kgenv.env import vendor

    src = tmp_path / "vmlinux"
    src.write_bytes(b"\x7fELF" * 100)
    store = tmp_path / "store"
    store.mkdir()

    def full(a, b):
        with open(b, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(vendor.shutil, "copyfile", full)
    with pytest.raises(OSError):
        vendor._store(src, store, "vmlinux")
    assert list(store.iterdir()) == []


def test_an_envs_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "envs").write_text("")
    monkeypatch.setenv("KGENV_ENVS", str(tmp_path / "envs"))
    r, lines = kgenv("envs", "list")
    assert r.exit_code == 2 and lines == [f"kgenv: {tmp_path / 'envs'}: the envs directory is not a directory"]
