"""Resolve a kernel's toolchain strings to exact distro packages, and compare toolchain strings."""

import re
from dataclasses import dataclass

from kgenv.distro.archive import Archive, Package
from kgenv.distro.debversion import split
from kgenv.env.fingerprint import Fingerprint
from kgenv.errors import UserError

# "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0", "gcc (GCC) 12.2.0", "gcc (GNU) 12.2.0"
CC_RE = re.compile(r"^(?P<prog>\S+) \((?P<vendor>[^)]*?)(?: (?P<pkgver>\d[^)\s]*))?\) (?P<upstream>\S+)")
# Packages every env image carries to configure and compile kernel code.
BUILD_DEPS = (
    "make",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "libc6-dev",
    "kmod",
    "cpio",
    "xz-utils",
    "patch",
    "python3",
    "openssl",
)


@dataclass(frozen=True)
class CompilerId:
    program: str
    vendor: str  # "Debian", "GCC", "GNU", "Ubuntu 12.3.0-1ubuntu1~22.04" ...
    package_version: str  # the distro package release, "" when the string has none
    upstream: str

    @classmethod
    def parse(cls, text: str) -> "CompilerId":
        m = CC_RE.match(text.strip())
        if not m:
            raise UserError(f"compiler string {text!r}: not in the form 'gcc-N (Vendor version) X.Y.Z'")
        return cls(m["prog"], m["vendor"], m["pkgver"] or "", m["upstream"])

    def differences(self, other: "CompilerId") -> list[str]:
        """What differs, by meaning: upstream version, then distro package release.

        `(GNU)` and `(GCC)` are two spellings of an upstream build, not a difference.
        """
        out = []
        if self.upstream != other.upstream:
            out.append(f"compiler version {self.upstream} vs {other.upstream}")
        if self.package_version != other.package_version:
            out.append(f"package release {self.package_version or '(none)'} vs {other.package_version or '(none)'}")
        plain = {"GCC", "GNU", ""}
        if self.vendor != other.vendor and not {self.vendor, other.vendor} <= plain:
            out.append(f"vendor {self.vendor} vs {other.vendor}")
        return out


def _by_upstream(archive: Archive, name: str, upstream: str) -> Package:
    """The newest archive version of `name` whose upstream part equals `upstream`."""
    matches = [p for p in archive.index().get(name, []) if split(p.version)[1] == upstream]
    if not matches:
        raise UserError(f"{name} {upstream}: no such version in {archive.line} at {archive.mirror}")
    return matches[-1]


def _with_exact_deps(archive: Archive, pkg: Package, out: dict[str, str]) -> None:
    """Pin pkg and, recursively, what it depends on with '(= version)' (gcc-12 → cpp-12 ...)."""
    if out.get(pkg.name) == pkg.version:
        return
    out[pkg.name] = pkg.version
    for dep in pkg.depends.split(","):
        m = re.match(r"\s*([\w.+-]+)(?::\w+)?\s*\(=\s*([^)]+)\)", dep.split("|")[0])
        if m:
            _with_exact_deps(archive, archive.get(m.group(1), m.group(2).strip()), out)


def resolve(fp: Fingerprint, archive: Archive) -> dict[str, str]:
    """Exact package pins for the compiler, binutils and pahole that built the kernel."""
    cc = CompilerId.parse(fp.cc_version_text)
    if fp.config.get("CLANG_VERSION", "0") not in ("", "0"):
        raise UserError(f"{fp.cc_version_text}: clang-built kernels are not supported yet")
    major = int(fp.config["GCC_VERSION"]) // 10000
    name = cc.program if re.fullmatch(r"gcc-\d+", cc.program) else f"gcc-{major}"
    pins: dict[str, str] = {}
    if cc.package_version:
        gcc = archive.get(name, cc.package_version)
    else:
        gcc = _by_upstream(archive, name, cc.upstream)
    _with_exact_deps(archive, gcc, pins)
    ld = re.search(r"GNU ld \([^)]*\) (\S+)", fp.linux_compiler or fp.banner)
    if ld:
        # The ld string carries no package release: take the archive's build of that upstream.
        _with_exact_deps(archive, _by_upstream(archive, "binutils", ld.group(1)), pins)
    pahole = int(fp.config.get("PAHOLE_VERSION") or 0)
    if pahole:
        _with_exact_deps(archive, _by_upstream(archive, "dwarves", f"{pahole // 100}.{pahole % 100}"), pins)
    return pins
