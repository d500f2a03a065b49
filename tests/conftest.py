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
    from kgenv.snapshot import snapshot_debian

    name = f"test-{debian_kernel.abi}"
    if manifest.path_of(name).exists():
        m = manifest.load(name)
        if docker_rt.image_id(m.image.id):
            return m
    return snapshot_debian(f"{debian_kernel.packages.line}:{debian_kernel.abi}", docker_rt, name,
                           force=True, progress=Progress())
