"""Debian kernels: resolve a release line or ABI to a complete package set, fetch and unpack it."""

import re
from dataclasses import dataclass
from pathlib import Path

from kgenv.distro.archive import Archive, Package, extract_deb
from kgenv.distro.debversion import sort_key
from kgenv.errors import ToolError, UserError
from kgenv.fsutil import cache_dir
from kgenv.progress import QUIET, Progress

FLAVOUR = "amd64"
# Which release line ships which kernel series; an ABI names its series.
LINES = {"bullseye": "5.10", "bookworm": "6.1", "trixie": "6.12", "forky": None}
# 6.1.0-57-amd64 (bookworm) and 6.12.118+deb13-amd64 (trixie onwards).
ABI_RE = re.compile(r"^(\d+\.\d+)\.\d+(?:-\d+|\+deb\d+(?:\.\d+)?)-" + FLAVOUR + "$")


@dataclass(frozen=True)
class KernelPackages:
    """The five packages that together describe one shipped kernel."""

    line: str
    abi: str
    version: str
    image: Package
    dbg: Package
    headers: Package
    headers_common: Package
    source: Package

    def all(self) -> list[Package]:
        return [self.image, self.dbg, self.headers, self.headers_common, self.source]


@dataclass(frozen=True)
class KernelFiles:
    """Where the unpacked pieces of a shipped kernel live in the cache."""

    packages: KernelPackages
    root: Path

    @property
    def abi(self) -> str:
        return self.packages.abi

    @property
    def version(self) -> str:
        return self.packages.version

    @property
    def vmlinuz(self) -> Path:
        return self.root / "image" / "boot" / f"vmlinuz-{self.abi}"

    @property
    def vmlinux(self) -> Path:
        return self.root / "dbg" / "usr" / "lib" / "debug" / "boot" / f"vmlinux-{self.abi}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "image" / "lib" / "modules" / self.abi

    @property
    def headers_dir(self) -> Path:
        return self.root / "headers" / "usr" / "src" / f"linux-headers-{self.abi}"

    @property
    def config(self) -> Path:
        # The headers' .config is the build's own; /boot/config-* lacks BUILD_SALT and key settings.
        return self.headers_dir / ".config"

    @property
    def symvers(self) -> Path:
        return self.headers_dir / "Module.symvers"

    @property
    def source_tarball(self) -> Path:
        series = self.packages.source.name.removeprefix("linux-source-")
        return self.root / "source" / "usr" / "src" / f"linux-source-{series}.tar.xz"


def line_of(spec: str) -> tuple[str, str | None]:
    """(release line, exact ABI or None) for 'bookworm', '6.1.0-57-amd64' or 'bookworm:6.1.0-57-amd64'."""
    line, _, abi = spec.rpartition(":")
    if not line and abi in LINES:
        return abi, None
    m = ABI_RE.match(abi)
    if not m:
        raise UserError(f"{spec}: neither a Debian release ({', '.join(LINES)}) nor an ABI like 6.1.0-57-{FLAVOUR}")
    if not line:
        line = next((ln for ln, series in LINES.items() if series == m.group(1)), "")
        if not line:
            raise UserError(f"{spec}: no known Debian release ships the {m.group(1)} series")
    return line, abi


def _same_version(archive: Archive, name: str, version: str) -> Package | None:
    return next((p for p in archive.index().get(name, []) if p.version == version), None)


def _complete(archive: Archive, image: Package, abi: str, line: str) -> KernelPackages | None:
    m = ABI_RE.match(abi)
    if m is None:
        raise UserError(f"{abi}: not a kernel ABI like 6.1.0-57-{FLAVOUR}")
    found: list[Package] = []
    for name in (
        f"linux-image-{abi}-dbg",
        f"linux-headers-{abi}",
        f"linux-headers-{abi.removesuffix('-' + FLAVOUR)}-common",
        f"linux-source-{m.group(1)}",
    ):
        pkg = _same_version(archive, name, image.version)
        if pkg is None:
            return None
        found.append(pkg)
    return KernelPackages(line, abi, image.version, image, *found)


def resolve(spec: str, archive: Archive | None = None) -> KernelPackages:
    """The newest kernel of a line (or the exact ABI) whose image, -dbg, headers and source all exist now."""
    line, want_abi = line_of(spec)
    archive = archive or Archive(line)
    pat = re.compile(r"^linux-image-(.+)-unsigned$")
    candidates = []
    for name, versions in archive.index().items():
        m = pat.match(name)
        series = ABI_RE.match(m.group(1)) if m else None
        if m is None or series is None:
            continue
        # A line's own kernel series only (bookworm also carries a 6.12 backport), unless asked by ABI.
        if (want_abi is None and series.group(1) == LINES.get(line)) or m.group(1) == want_abi:
            candidates += [(m.group(1), p) for p in versions]
    candidates.sort(key=lambda c: sort_key(c[1].version), reverse=True)
    for abi, image in candidates:
        if kp := _complete(archive, image, abi, line):
            return kp
    raise UserError(
        f"{spec}: no kernel in {line} at {archive.mirror} has image, -dbg, headers and source packages of one version"
    )


def fetch(kp: KernelPackages, archive: Archive | None = None, progress: Progress = QUIET) -> KernelFiles:
    """Download (checksummed) and unpack the kernel's packages into the cache."""
    archive = archive or Archive(kp.line, progress=progress)
    root = cache_dir() / "kernels" / f"{kp.abi}_{kp.version}"
    parts = {
        "image": (kp.image, None),
        "dbg": (kp.dbg, ["./usr/lib/debug/boot/*"]),
        "headers": (kp.headers, None),
        "headers-common": (kp.headers_common, None),
        "source": (kp.source, None),
    }
    for sub, (pkg, members) in parts.items():
        if not (root / sub / ".kgenv-extracted").exists():
            deb = archive.download(pkg)
            progress.step(f"unpack {pkg.name}")
            extract_deb(deb, root / sub, members)
    files = KernelFiles(kp, root)
    for need in (files.vmlinuz, files.vmlinux, files.config, files.source_tarball):
        if not need.exists():
            raise ToolError(f"{need}: expected in the {kp.abi} packages but missing")
    return files


def kernel(spec: str, progress: Progress = QUIET) -> KernelFiles:
    """Resolve and fetch in one step."""
    line, _ = line_of(spec)
    archive = Archive(line, progress=progress)
    return fetch(resolve(spec, archive), archive, progress)
