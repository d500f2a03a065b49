"""Shared, session-scoped fixtures: real Debian kernels, one env image, cached across runs."""

import os

import pytest

from kgenv.distro import debian
from kgenv.fsutil import cache_dir
from kgenv.progress import Progress

# The release line the real-kernel tiers run against; the newest complete ABI is resolved now.
LINE = os.environ.get("KGENV_TEST_LINE", "bookworm")


@pytest.fixture(scope="session")
def debian_kernel() -> debian.KernelFiles:
    """Debian's current kernel of LINE: image, -dbg vmlinux, headers and source, fetched into the cache."""
    return debian.kernel(LINE)


@pytest.fixture(scope="session")
def envs_dir():
    """Test envs live in the cache, so a second run reuses the image instead of rebuilding it."""
    d = cache_dir() / "test-envs"
    d.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("KGENV_ENVS")
    os.environ["KGENV_ENVS"] = str(d)
    yield d
    if old is None:
        os.environ.pop("KGENV_ENVS", None)
    else:
        os.environ["KGENV_ENVS"] = old


@pytest.fixture(scope="session")
def docker_rt():
    """The Docker engine; with none running this fails loudly (CI must start one)."""
    from kgenv.runtime.docker import runtime

    return runtime()


@pytest.fixture(scope="session")
def env(debian_kernel, envs_dir, docker_rt):
    """The env of the current kernel: snapshotted once, reused while its image is in the engine."""
    from kgenv import manifest
    from kgenv.env.debian import snapshot_debian

    name = f"test-{debian_kernel.abi}"
    if manifest.path_of(name).exists():
        m = manifest.load(name)
        if docker_rt.image_id(m.image.id):
            return m
    return snapshot_debian(
        f"{debian_kernel.packages.line}:{debian_kernel.abi}", docker_rt, name, force=True, progress=Progress()
    )


@pytest.fixture(scope="session")
def livepatch_sample_src(debian_kernel, tmp_path_factory):
    """The kernel's own samples/livepatch/livepatch-sample.c with a Kbuild file, from the shipped source."""
    import subprocess

    d = tmp_path_factory.mktemp("livepatch-sample")
    tarball = debian_kernel.source_tarball
    series = tarball.name.removesuffix(".tar.xz")
    subprocess.run(
        [
            "tar",
            "-xf",
            str(tarball),
            "-C",
            str(d),
            "--strip-components=3",
            f"{series}/samples/livepatch/livepatch-sample.c",
        ],
        check=True,
    )
    (d / "Kbuild").write_text("obj-m += livepatch-sample.o\n")
    return d


@pytest.fixture(scope="session")
def livepatch_sample_ko(env, docker_rt, livepatch_sample_src, tmp_path_factory):
    """livepatch-sample.ko built by Kbuild in the env image against the prepared tree."""
    from kgenv.build.kbuild import build_module

    return build_module(docker_rt, env, livepatch_sample_src, tmp_path_factory.mktemp("sample-ko"))
