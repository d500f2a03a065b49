"""The env manifest (envs/<name>.toml): schema, validation, atomic write, lookup."""

import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from kgenv.errors import UserError
from kgenv.fsutil import cache_dir, sha256_cached, write_atomic

SCHEMA = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# An image identity is its content digest; a tag (kgenv/x:env) can be moved to other content.
IMAGE_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")  # fullmatch: no trailing newline
TAG_RE = re.compile(r"[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# what every stage reads of [fingerprint]: the compiler string the image must print
REQUIRED_FINGERPRINT = ("cc_version_text",)
# What a missing [files.<role>] means, for the one-line error of Manifest.file.
_ROLE_NOTES = {
    "vmlinuz": "the snapshot found no bootable kernel image, e.g. a build dir without bzImage; boot tests need one",
    "vmlinux": "the snapshot found no vmlinux with symbols",
    "symvers": "the snapshot found no Module.symvers",
    "config": "the snapshot found no .config",
    "source": "the snapshot stored no kernel source",
}


@dataclass(frozen=True)
class Kernel:
    distro: str
    line: str
    release: str
    version: str
    build_id: str
    banner: str
    srctree: str
    objtree: str
    source_package: str
    source_sha256: str
    config_sha256: str
    source_date_epoch: int


@dataclass(frozen=True)
class Image:
    id: str
    tag: str
    suite: str
    include: str  # the mmdebstrap --include set, comma-separated: restore must repeat it exactly
    base_id: str
    rootfs_sha256: str
    tree_sha256: str
    size: int


@dataclass(frozen=True)
class FileRef:
    """A shipped binary later stages need, in the cache (path relative to it) with its sha256."""

    path: str
    sha256: str
    package: str

    def resolve(self) -> Path:
        return cache_dir() / self.path


@dataclass(frozen=True)
class Manifest:
    name: str
    kernel: Kernel
    fingerprint: dict[str, str]
    make: dict[str, str]
    toolchain: dict[str, str]
    image: Image
    packages: dict[str, str]
    files: dict[str, FileRef]
    schema: int = SCHEMA
    kgenv_version: str = ""

    def file_ref(self, role: str) -> FileRef:
        """The record of shipped file `role`; one-line UserError when the snapshot recorded none."""
        ref = self.files.get(role)
        if ref is None:
            raise UserError(
                f"env {self.name}: its manifest records no [files.{role}] "
                f"({_ROLE_NOTES.get(role, 'the snapshot did not find that file')})"
            )
        return ref

    def file(self, role: str) -> Path:
        """Shipped file `role` in the cache, checked against its recorded sha256; one-line UserError
        when it is not recorded, the cache lost it or it is not the recorded file (callers that can
        fetch it again use file_ref). The hash is remembered per (path, inode, size, mtime), so only
        a new or changed file is read in full."""
        ref = self.file_ref(role)
        path = ref.resolve()
        debian = self.kernel.distro == "debian"
        fix = f"run `kgenv envs restore {self.name}`" if debian else "snapshot its build dir again"
        if not path.exists():
            raise UserError(f"{path}: env {self.name}'s files.{role} is not in the cache; {fix}")
        if not path.is_file():
            raise UserError(f"{path}: env {self.name}'s files.{role} is not a regular file; {fix}")
        digest = sha256_cached(path)
        if digest != ref.sha256:
            raise UserError(
                f"{path}: sha256 differs from env {self.name}'s files.{role} "
                f"(found {digest[:16]}, recorded {ref.sha256[:16]}); {fix}"
            )
        return path

    def to_toml(self) -> str:
        lines = [f"schema = {self.schema}", f"name = {_q(self.name)}", f"kgenv_version = {_q(self.kgenv_version)}", ""]
        for section in ("kernel", "fingerprint", "make", "toolchain", "image", "packages"):
            value = getattr(self, section)
            lines += [f"[{section}]", *_pairs(value if isinstance(value, dict) else asdict(value)), ""]
        for role, ref in sorted(self.files.items()):
            lines += [f"[files.{role}]", *_pairs(asdict(ref)), ""]
        return "\n".join(lines)


def _q(v) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else json.dumps(str(v), ensure_ascii=False)


def _pairs(d: dict) -> list[str]:
    return [f"{k if re.fullmatch(r'[A-Za-z0-9_-]+', k) else _q(k)} = {_q(v)}" for k, v in d.items()]


def envs_dir() -> Path:
    return Path(os.environ.get("KGENV_ENVS", "envs"))


def path_of(name: str) -> Path:
    if not NAME_RE.match(name):
        raise UserError(f"{name!r}: not a valid env name (letters, digits, '.', '_', '-')")
    return envs_dir() / f"{name}.toml"


def _record(cls, data, where: str):
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a table")
    names = {f.name: f.type for f in fields(cls)}
    missing = [n for n in names if n not in data]
    if missing:
        raise UserError(f"{where}: missing key(s) {', '.join(missing)}")
    for n, t in names.items():
        want = int if t in (int, "int") else str
        if not isinstance(data[n], want) or isinstance(data[n], bool):  # TOML true is no integer here
            raise UserError(f"{where}.{n}: expected {want.__name__}")
    return cls(**{n: data[n] for n in names})


def _strings(data, where: str) -> dict[str, str]:
    if not isinstance(data, dict) or not all(isinstance(v, (str, int)) for v in data.values()):
        raise UserError(f"{where}: expected a table of strings")
    return {k: str(v) for k, v in data.items()}


def parse(text: str, where: str) -> Manifest:
    """A Manifest from TOML text; UserError naming `where` and the problem otherwise."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where}: not valid TOML: {e}") from None
    if data.get("schema") != SCHEMA:
        raise UserError(f"{where}: schema {data.get('schema')!r} is not {SCHEMA}")
    if not isinstance(data.get("name"), str) or not NAME_RE.match(data["name"]):
        raise UserError(f"{where}: name missing or invalid")
    files = data.get("files", {})
    if not isinstance(files, dict):
        raise UserError(f"{where}: [files] must be a table")
    refs = {role: _record(FileRef, ref, f"{where}: files.{role}") for role, ref in files.items()}
    image = _record(Image, data.get("image"), f"{where}: [image]")
    if not IMAGE_ID_RE.fullmatch(image.id):
        raise UserError(f"{where}: image.id {image.id!r} is not an image ID (sha256:<64 hex>); a tag is no identity")
    if not TAG_RE.fullmatch(image.tag):
        raise UserError(f"{where}: image.tag {image.tag!r} is not a REPOSITORY:TAG name")
    fingerprint = _strings(data.get("fingerprint"), f"{where}: [fingerprint]")
    if missing := [k for k in REQUIRED_FINGERPRINT if not fingerprint.get(k)]:
        raise UserError(f"{where}: [fingerprint] lacks {', '.join(missing)}")
    for role, ref in refs.items():
        if ref.path.startswith("/") or ".." in Path(ref.path).parts:
            raise UserError(f"{where}: files.{role}.path {ref.path!r} escapes the cache")
    return Manifest(
        name=data["name"],
        kernel=_record(Kernel, data.get("kernel"), f"{where}: [kernel]"),
        fingerprint=fingerprint,
        make=_strings(data.get("make"), f"{where}: [make]"),
        toolchain=_strings(data.get("toolchain"), f"{where}: [toolchain]"),
        image=image,
        packages=_strings(data.get("packages"), f"{where}: [packages]"),
        files=refs,
        kgenv_version=str(data.get("kgenv_version", "")),
    )


def load(name_or_path: str) -> Manifest:
    """An env by name (envs/<name>.toml) or by path to a .toml file."""
    path = Path(name_or_path) if name_or_path.endswith(".toml") else path_of(name_or_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such env manifest") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    return parse(text, str(path))


def save(m: Manifest, force: bool = False) -> Path:
    """Write envs/<name>.toml atomically; an existing manifest is replaced only with force."""
    path = path_of(m.name)
    try:
        write_atomic(path, m.to_toml(), exclusive=not force)
    except FileExistsError:
        raise UserError(f"{path}: env exists; use --force to replace it") from None
    return path


def names() -> list[str]:
    d = envs_dir()
    if d.exists() and not d.is_dir():  # $KGENV_ENVS naming a file is a mistake, not an empty list
        raise UserError(f"{d}: the envs directory is not a directory")
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []
