"""A Debian archive: signed indices, package records, and checksum-verified downloads into the cache."""

import hashlib
import lzma
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kgenv.distro import aptsources
from kgenv.distro.debversion import sort_key
from kgenv.errors import ToolError, UserError
from kgenv.fsutil import cache_dir, sha256_file, write_atomic
from kgenv.progress import QUIET, Progress

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
ARCH = "amd64"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    filename: str
    sha256: str
    size: int
    base: str  # archive base URI the filename is relative to
    suite: str
    depends: str = ""
    source: str = ""

    @property
    def url(self) -> str:
        return f"{self.base}/{self.filename}"

    @property
    def pin(self) -> str:
        return f"{self.name}={self.version}"


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.read()
    except (urllib.error.URLError, OSError) as e:
        raise ToolError(f"{url}: download failed: {e}") from None


def _stanzas(text: str):
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t"):
                if key:
                    fields[key] += "\n" + line
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if "Package" in fields:
            yield fields


@dataclass
class Archive:
    """The Debian archive of one release line (e.g. bookworm), across its suites."""

    line: str
    mirror: str = ""
    security: str = ""
    progress: Progress = QUIET
    _index: dict[str, list[Package]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.mirror or not self.security:
            main, sec = aptsources.mirrors()
            self.mirror = self.mirror or main
            self.security = self.security or sec

    def suites(self) -> list[tuple[str, str]]:
        """(base URI, suite) for the release, its updates and its security suite."""
        return [
            (self.mirror, self.line),
            (self.mirror, f"{self.line}-updates"),
            (self.security, f"{self.line}-security"),
        ]

    def sources_lines(self) -> list[str]:
        """One-line apt sources for this release (what mmdebstrap gets)."""
        return [f"deb {base} {suite} main" for base, suite in self.suites()]

    def _inrelease(self, base: str, suite: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"{base}/dists/{suite}/InRelease", timeout=60) as r:
                data = r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None  # e.g. no -updates suite for this release
            raise ToolError(f"{base}/dists/{suite}/InRelease: {e}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ToolError(f"{base}/dists/{suite}/InRelease: download failed: {e}") from None
        self._check_signature(data, f"{base}/dists/{suite}/InRelease")
        return data

    @staticmethod
    def _check_signature(data: bytes, what: str) -> None:
        if not KEYRING.exists():
            raise ToolError(f"{KEYRING}: missing; install debian-archive-keyring to verify {what}")
        r = subprocess.run(["gpgv", "--keyring", str(KEYRING), "-"], input=data, capture_output=True)
        if r.returncode != 0:
            raise ToolError(f"{what}: signature check failed: {r.stderr.decode(errors='replace').strip()[-200:]}")

    def _packages_text(self, base: str, suite: str) -> str:
        release = self._inrelease(base, suite)
        if release is None:
            return ""
        want = f"main/binary-{ARCH}/Packages.xz"
        digest = next(
            (
                ln.split()[0]
                for ln in release.decode().split("SHA256:", 1)[1].splitlines()
                if ln.strip().endswith(" " + want)
            ),
            None,
        )
        if digest is None:
            raise ToolError(f"{base}/dists/{suite}/InRelease: lists no {want}")
        cached = cache_dir() / "index" / f"{digest}.Packages"
        if not cached.exists():
            self.progress.step(f"index {suite} ({base})")
            data = _get(f"{base}/dists/{suite}/{want}")
            if hashlib.sha256(data).hexdigest() != digest:
                raise ToolError(f"{base}/dists/{suite}/{want}: checksum differs from InRelease")
            write_atomic(cached, lzma.decompress(data))
        return cached.read_text(errors="replace")

    def index(self) -> dict[str, list[Package]]:
        """Package name → every version the release's suites offer, oldest first."""
        if self._index:
            return self._index
        for base, suite in self.suites():
            for f in _stanzas(self._packages_text(base, suite)):
                pkg = Package(
                    f["Package"],
                    f["Version"],
                    f["Filename"],
                    f.get("SHA256", ""),
                    int(f.get("Size", 0)),
                    base,
                    suite,
                    f.get("Depends", ""),
                    f.get("Source", "").split(" ")[0] or f["Package"],
                )
                self._index.setdefault(pkg.name, []).append(pkg)
        for versions in self._index.values():
            versions.sort(key=lambda p: sort_key(p.version))
        if not self._index:
            raise UserError(f"{self.line}: no such Debian release at {self.mirror}")
        return self._index

    def get(self, name: str, version: str | None = None) -> Package:
        """The package at `version` (the newest when None); UserError names package=version and mirror."""
        versions = self.index().get(name, [])
        if version is None and versions:
            return versions[-1]
        for p in versions:
            if p.version == version:
                return p
        what = f"{name}={version}" if version else name
        raise UserError(f"{what}: not in {self.line} at {self.mirror} / {self.security}")

    def download(self, pkg: Package) -> Path:
        """The .deb in the cache, fetched and sha256-checked against the signed index if needed."""
        dest = cache_dir() / "debs" / Path(pkg.filename).name
        if dest.exists() and dest.stat().st_size == pkg.size and sha256_file(dest) == pkg.sha256:
            return dest
        self.progress.step(f"download {pkg.pin} ({pkg.size / 1e6:.0f} MB)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".part")
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(pkg.url, timeout=120) as r, open(tmp, "wb") as out:
                while chunk := r.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
                    self.progress.tick(f"{pkg.name}: {out.tell() / 1e6:.0f}/{pkg.size / 1e6:.0f} MB")
        except (urllib.error.URLError, OSError) as e:
            tmp.unlink(missing_ok=True)
            raise ToolError(f"{pkg.url}: download failed: {e}") from None
        except BaseException:  # Ctrl-C: no half .deb left in the cache
            tmp.unlink(missing_ok=True)
            raise
        if h.hexdigest() != pkg.sha256:
            tmp.unlink(missing_ok=True)
            raise ToolError(f"{pkg.url}: sha256 differs from the archive index")
        tmp.replace(dest)
        return dest


def extract_deb(deb: Path, dest: Path, members: list[str] | None = None) -> Path:
    """Unpack a .deb's data into dest (once; a marker file records completion)."""
    done = dest / ".kgenv-extracted"
    if done.exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    deb_tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    r = subprocess.run(
        ["tar", "-x", "-C", str(dest), "--wildcards", *(members or [])], stdin=deb_tar.stdout, capture_output=True
    )
    deb_tar.wait()
    if deb_tar.returncode or r.returncode:
        shutil.rmtree(dest, ignore_errors=True)
        raise ToolError(f"{deb}: cannot unpack: {r.stderr.decode(errors='replace').strip()[:200]}")
    done.touch()
    return dest
