"""Read the Debian mirrors from this machine's apt configuration (never from a literal host)."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kgenv.errors import UserError

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class Source:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""


def _deb822(text: str) -> list[Source]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append(
                Source(
                    uri.rstrip("/"),
                    tuple(fields.get("suites", "").split()),
                    tuple(fields.get("components", "").split()),
                    fields.get("signed-by", ""),
                )
            )
    return out


def _one_line(text: str) -> list[Source]:
    out = []
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            out.append(Source(words[1].rstrip("/"), (words[2],), tuple(words[3:])))
    return out


def sources(apt_dir: Path = APT_DIR) -> list[Source]:
    """Every enabled binary source apt would use, in apt's file order."""
    files = [apt_dir / "sources.list"] + sorted((apt_dir / "sources.list.d").glob("*"))
    out: list[Source] = []
    for f in files:
        if f.suffix == ".list" and f.is_file():
            out += _one_line(f.read_text(errors="replace"))
        elif f.suffix == ".sources" and f.is_file():
            out += _deb822(f.read_text(errors="replace"))
    return out


def _is_debian(src: Source) -> bool:
    return "debian-archive-keyring" in src.signed_by or re.search(r"/debian(-security)?$", src.uri) is not None


def mirrors(apt_dir: Path = APT_DIR) -> tuple[str, str]:
    """(main mirror, security mirror) base URIs; $KGENV_MIRROR / $KGENV_SECURITY_MIRROR override."""
    main = os.environ.get("KGENV_MIRROR", "")
    security = os.environ.get("KGENV_SECURITY_MIRROR", "")
    for src in filter(_is_debian, sources(apt_dir)):
        is_sec = any(s.endswith("-security") for s in src.suites)
        if is_sec and not security:
            security = src.uri
        elif not is_sec and not main:
            main = src.uri
    if not main:
        raise UserError(f"{apt_dir}: no Debian mirror in the apt sources; set KGENV_MIRROR")
    # Debian's convention: the security archive sits beside the main one as debian-security.
    return main, security or re.sub(r"/debian$", "/debian-security", main)
