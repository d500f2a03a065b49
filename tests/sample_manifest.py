"""A complete, valid env manifest for tests that need one without a snapshot, saved with cached files
when a command must load it, and a runtime that lets no container run (test modules never import
each other: they all take these from here)."""

from dataclasses import replace
from pathlib import Path

import pytest

from kgenv import manifest
from kgenv.fsutil import sha256_file
from kgenv.manifest import FileRef, Image, Kernel, Manifest

IMAGE = "sha256:" + "5" * 64


def sample(name="debian-6.1.0-1-amd64") -> Manifest:
    return Manifest(
        name=name,
        kernel=Kernel(
            "debian",
            "bookworm",
            "6.1.0-1-amd64",
            "6.1.1-1",
            "ab" * 20,
            'Linux version "q" \\ x',
            "/build/x",
            "debian/build",
            "linux-source-6.1=6.1.1-1",
            "0" * 64,
            "1" * 64,
            1700000000,
        ),
        fingerprint={"cc_version_text": "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"},
        make={"CC": "gcc-12", "KBUILD_BUILD_VERSION_TIMESTAMP": "Debian 6.1.1-1 (2023-01-01)"},
        toolchain={"gcc-12": "12.2.0-14+deb12u1"},
        image=Image("sha256:" + "2" * 64, f"kgenv/{name}:env", "bookworm", "bc,gcc-12", "", "", "", 1),
        packages={"libc6": "2.36-9+deb12u14", "g++": "1"},
        files={"vmlinux": FileRef("kernels/x/vmlinux", "3" * 64, "linux-image-dbg=1")},
        kgenv_version="0.1.0",
    )


def saved_env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    cached: dict[str, str | bytes],
    keep: tuple[str, ...] = (),
    **kernel: object,
) -> Manifest:
    """sample(name) saved in a private envs dir ($KGENV_ENVS), each `cached` role's content in a private
    cache ($KGENV_CACHE) under its true hash; `keep` names sample files recorded as they are."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KGENV_CACHE", str(cache))
    monkeypatch.setenv("KGENV_ENVS", str(tmp_path / "envs"))
    m = sample(name)
    files = {role: m.files[role] for role in keep}
    for role, data in cached.items():
        f = cache / "k" / role
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data.encode() if isinstance(data, str) else data)
        files[role] = FileRef(f"k/{role}", sha256_file(f), "x")
    m = replace(m, image=replace(m.image, id=IMAGE), files=files, kernel=replace(m.kernel, **kernel))
    manifest.save(m)
    return m


class NoEngine:
    """A runtime for tests that must not reach an engine: the env's image is there, no container runs."""

    name = "fake"

    def __init__(self, why: str = "no container may run in this test"):
        self.why = why

    def image_id(self, ref: str) -> str | None:
        return IMAGE

    def run(self, *args, **kwargs):
        raise AssertionError(self.why)
