"""A complete, valid env manifest for tests that need one without a snapshot (test modules never
import each other: test_manifest.py and test_build_report.py both take it from here)."""

from kgenv.manifest import FileRef, Image, Kernel, Manifest


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
