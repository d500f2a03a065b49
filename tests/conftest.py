"""Shared, session-scoped fixtures: real Debian kernels from the archive, cached across runs."""

import os

import pytest

from kgenv.distro import debian

# The release line the real-kernel tiers run against; the newest complete ABI is resolved now.
LINE = os.environ.get("KGENV_TEST_LINE", "bookworm")


@pytest.fixture(scope="session")
def debian_kernel() -> debian.KernelFiles:
    """Debian's current kernel of LINE: image, -dbg vmlinux, headers and source, fetched into the cache."""
    return debian.kernel(LINE)
