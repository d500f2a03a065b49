"""Check a fix diff (untrusted input) and apply it to copies of the touched kernel files."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kgenv.errors import UserError

DEV_NULL = "/dev/null"
MAX_OFFSET = 100  # lines either side of the expected spot a hunk may move (patch: no fuzz)
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_REFUSED_MODES = ("120000", "160000")  # symlink, gitlink
_FILE_MODES = ("100644", "100755", "100664")  # 100664: old git's group-writable file
_RENAME = ("rename from", "rename to")
_C_ESCAPES = {"a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class Hunk:
    """One `@@` hunk: its header and body lines (each with its ' ', '-', '+' prefix)."""

    old_start: int
    old_len: int
    new_start: int
    new_len: int
    header: str
    lines: tuple[str, ...]

    def old_lines(self) -> list[str]:
        return _side(self.lines, skip="+")

    def new_lines(self) -> list[str]:
        return _side(self.lines, skip="-")


@dataclass(frozen=True)
class FilePatch:
    """The changes to one file; a None path is /dev/null (file added or deleted)."""

    old_path: str | None
    new_path: str | None
    hunks: tuple[Hunk, ...]

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or ""

    @property
    def added(self) -> bool:
        return self.old_path is None

    @property
    def deleted(self) -> bool:
        return self.new_path is None

    @property
    def renamed(self) -> bool:
        return bool(self.old_path and self.new_path and self.old_path != self.new_path)

    def to_dict(self) -> dict:
        return {
            "old_path": self.old_path,
            "new_path": self.new_path,
            "hunks": len(self.hunks),
            "added": self.added,
            "deleted": self.deleted,
            "renamed": self.renamed,
        }


@dataclass(frozen=True)
class FixDiff:
    """A parsed, path-checked fix diff."""

    name: str  # the diff file, for messages
    files: tuple[FilePatch, ...]

    @property
    def paths(self) -> tuple[str, ...]:
        out = [p for f in self.files for p in (f.old_path, f.new_path) if p]
        return tuple(dict.fromkeys(out))

    @property
    def translation_units(self) -> tuple[str, ...]:
        """Objects to rebuild: each surviving .c file as its .o."""
        return tuple(
            dict.fromkeys(f.new_path[:-2] + ".o" for f in self.files if f.new_path and f.new_path.endswith(".c"))
        )

    @property
    def headers(self) -> tuple[str, ...]:
        return tuple(p for p in self.paths if p.endswith(".h"))

    @property
    def assembly(self) -> tuple[str, ...]:
        return tuple(p for p in self.paths if p.endswith((".S", ".s")))

    @property
    def build_files(self) -> tuple[str, ...]:
        """Paths that steer the build itself (make runs them as root in the container): Makefile,
        Kbuild, Kconfig*, *.mk and anything under scripts/."""
        return tuple(p for p in self.paths if is_build_file(p))

    def error(self, what: str) -> UserError:
        return UserError(f"{self.name}: {what}")

    def to_dict(self) -> dict:
        return {
            "diff": self.name,
            "files": [f.to_dict() for f in self.files],
            "translation_units": list(self.translation_units),
            "headers": list(self.headers),
            "assembly": list(self.assembly),
        }


def is_build_file(path: str) -> bool:
    p = PurePosixPath(path)
    name = p.name
    return (
        p.parts[0] == "scripts"
        or name.startswith(("Makefile", "Kbuild", "Kconfig"))
        or name.endswith(".mk")
        or name in ("GNUmakefile", "makefile")
    )


def _side(lines: tuple[str, ...], skip: str) -> list[str]:
    """One side of a hunk: context plus that side's lines, with '\\ No newline' applied."""
    out: list[str] = []
    last_kept = False
    for line in lines:
        tag = line[:1]
        if tag == "\\":
            if last_kept and out:
                out[-1] = out[-1].rstrip("\n")
            continue
        last_kept = tag != skip
        if last_kept:
            out.append(line[1:])
    return out


def split_lines(text: str) -> list[str]:
    """Lines ending in '\\n' only (str.splitlines would also split at form feeds, which C has)."""
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


# -- parsing ------------------------------------------------------------------------------------


def load(path: str | os.PathLike) -> FixDiff:
    """Read and parse a diff file; refuse one whose file sections name two different files."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    d = parse(raw, Path(path).name)
    check_names(d, str(path))
    return d


def check_names(diff: FixDiff, where: str) -> None:
    """A file section whose old and new names differ (a rename, or `--- a/x.c` over `+++ b/y.c`)
    would patch one file and build another: one-line UserError naming `where` and both names."""
    for f in diff.files:
        if f.renamed:
            raise UserError(
                f"{where}: old name {f.old_path} and new name {f.new_path} differ; "
                "renames and mismatched names are refused (a fix patches the file it names)"
            )


def parse(raw: bytes | str, name: str = "fix.diff") -> FixDiff:
    """Parse a unified diff or a `git format-patch` mail; every path is checked syntactically."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "surrogateescape")
    return FixDiff(name, tuple(_Parser(text, name).files()))


class _Parser:
    """A line cursor over the diff; files() yields one FilePatch per file section."""

    def __init__(self, text: str, name: str):
        self.lines = split_lines(text)
        self.name = name
        self.i = 0

    def fail(self, what: str) -> UserError:
        return UserError(f"{self.name}: {what}")

    def files(self) -> list[FilePatch]:
        out = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.startswith("diff --git "):
                out.append(self._git_file())
            elif self._at_unified_header():
                out.append(self._unified_file({}))
            else:
                self.i += 1  # mail headers, commit message, diffstat, signature: not ours
        if not out:
            raise self.fail("no file changes found (not a unified diff)")
        return out

    def _at_unified_header(self) -> bool:
        nxt = self.lines[self.i + 1] if self.i + 1 < len(self.lines) else ""
        return self.lines[self.i].startswith("--- ") and nxt.startswith("+++ ")

    def _git_file(self) -> FilePatch:
        ext = {"git": self.lines[self.i].rstrip("\n")}
        self.i += 1
        while self.i < len(self.lines):
            line = self.lines[self.i].rstrip("\n")
            if line.startswith("diff --git ") or self._at_unified_header():
                break
            if line.startswith("GIT binary patch") or line.startswith("Binary files "):
                raise self.fail(f"binary patch refused ({ext['git'][11:]})")
            if line.startswith(("old mode ", "new mode ", "new file mode ", "deleted file mode ")):
                self._check_mode(line)
                key, mode = line.rsplit(" ", 1)
                ext[key] = mode  # "new file mode", "old mode", ... -> the mode
            for field in ("rename from ", "rename to ", "copy from ", "copy to ", "similarity index "):
                if line.startswith(field):
                    ext[field.strip()] = line[len(field) :]
            self.i += 1
        self._check_rename(ext)
        if self.i < len(self.lines) and self._at_unified_header():
            return self._unified_file(ext)
        return self._header_only(ext)

    def _check_rename(self, ext: dict[str, str]) -> None:
        """A rename needs both halves; a half one (or a similarity index without it) is no rename git writes."""
        have = [k for k in _RENAME if k in ext]
        if len(have) == 1:
            missing = next(k for k in _RENAME if k not in ext)
            raise self.fail(f"'{have[0]} {ext[have[0]]}' without '{missing}' ('{ext['git']}')")
        if "similarity index" in ext and not have and "copy from" not in ext:
            raise self.fail(f"'similarity index' without a rename or copy ('{ext['git']}')")

    def _check_mode(self, line: str) -> None:
        mode = line.rsplit(" ", 1)[-1]
        if mode in _REFUSED_MODES:
            raise self.fail(f"mode change to a symlink or submodule refused ({line})")
        if mode not in _FILE_MODES:  # git writes only these for a file; anything else is no git diff
            raise self.fail(f"line {self.i + 1}: invalid file mode in '{line[:60]}' (expected 100644 or 100755)")

    def _header_only(self, ext: dict[str, str]) -> FilePatch:
        """A git section without hunks: a pure rename, or an empty new/deleted file."""
        if "copy from" in ext:
            raise self.fail("git copy patches are not supported")
        if "new file mode" in ext and "deleted file mode" in ext:
            raise self.fail(f"a file both created and deleted ('{ext['git']}')")
        if "rename from" in ext:
            old = self._path(ext["rename from"], strip=False)
            return FilePatch(old, self._path(ext["rename to"], strip=False), ())
        parts = _git_names(ext["git"])
        if parts is None:
            raise self.fail(f"cannot read file names from '{ext['git']}'")
        old, new = self._path(parts[0]), self._path(parts[1])
        return FilePatch(None if "new file mode" in ext else old, None if "deleted file mode" in ext else new, ())

    def _unified_file(self, ext: dict[str, str]) -> FilePatch:
        old = self._path(_header_name(self.lines[self.i][4:]))
        new = self._path(_header_name(self.lines[self.i + 1][4:]))
        self.i += 2
        if "copy from" in ext:
            raise self.fail("git copy patches are not supported")
        if "rename from" in ext:  # git applies the rename, so its names count: check_names refuses them
            old, new = self._path(ext["rename from"], strip=False), self._path(ext["rename to"], strip=False)
        elif "git" in ext:
            self._check_git_names(ext["git"], old or new)
        path = old or new
        if path is None:
            raise self.fail("both sides of a file header are /dev/null")
        hunks = []
        while self.i < len(self.lines) and self.lines[self.i].startswith("@@"):
            hunks.append(self._hunk(path))
        if not hunks:
            raise self.fail(f"no hunks for {new or old}")
        return FilePatch(old, new, tuple(hunks))

    def _hunk(self, path: str) -> Hunk:
        header = self.lines[self.i].rstrip("\n")
        m = _HUNK.match(header)
        if not m:
            raise self.fail(f"malformed hunk header in {path} ({header[:60]})")
        o_start, n_start = int(m.group(1)), int(m.group(3))
        o_len = 1 if m.group(2) is None else int(m.group(2))
        n_len = 1 if m.group(4) is None else int(m.group(4))
        self.i += 1
        body = self._hunk_body(path, header, o_len, n_len)
        return Hunk(o_start, o_len, n_start, n_len, header[: m.end()], body)

    def _hunk_body(self, path: str, header: str, o_left: int, n_left: int) -> tuple[str, ...]:
        body = []
        while o_left or n_left or self._no_newline_next():
            if self.i >= len(self.lines):
                raise self.fail(f"truncated hunk in {path} ({header})")
            line = self.lines[self.i]
            if "\0" in line:
                raise self.fail(f"NUL byte on line {self.i + 1}")
            if line.startswith("+") and (bad := _not_utf8(line)):
                # the generated source is written as UTF-8, like every kernel source (checkpatch: INVALID_UTF8)
                raise self.fail(f"line {self.i + 1}: added text is not UTF-8 (byte {bad}); re-encode the fix as UTF-8")
            if line in ("\n", "\r\n"):
                line = " " + line  # a blank context line whose space an editor stripped
            tag = line[:1]
            if tag == " " and o_left and n_left:
                o_left, n_left = o_left - 1, n_left - 1
            elif tag == "-" and o_left:
                o_left -= 1
            elif tag == "+" and n_left:
                n_left -= 1
            elif tag != "\\":
                raise self.fail(f"malformed hunk in {path} ({header}), line {self.i + 1}")
            body.append(line if line.endswith("\n") else line + "\n")
            self.i += 1
        return tuple(body)

    def _no_newline_next(self) -> bool:
        return self.i < len(self.lines) and self.lines[self.i].startswith("\\")

    def _check_git_names(self, git: str, path: str | None) -> None:
        """`diff --git a/x b/x` over `--- a/y`: git would patch x, kgenv y; refuse the disagreement."""
        git = git.rstrip("\r")  # a CRLF diff: the ---/+++ names lose theirs in _header_name
        parts = _git_names(git)
        if parts is None or path is None or self._path(parts[1]) != path:
            raise self.fail(f"'{git[:80]}' names another file than its ---/+++ lines ({path})")

    def _path(self, name: str, strip: bool = True) -> str | None:
        """A checked tree-relative path (None for /dev/null); strip drops a/ b/ (like -p1)."""
        name = _unquote(name, self.fail)
        if name == DEV_NULL:
            return None
        if "\0" in name:
            raise self.fail(f"path {name!r} contains a NUL byte")
        if _not_utf8(name):  # kernel paths are UTF-8 (ASCII, in fact): this one would name no file there
            shown = name.encode(errors="surrogateescape").decode(errors="backslashreplace")
            raise self.fail(f"path '{shown}' is not UTF-8")
        if name.startswith("/"):
            raise self.fail(f"path '{name}' is absolute, outside the kernel tree")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if strip:
            parts = parts[1:]
        if ".." in parts:
            raise self.fail(f"path '{name}' escapes the kernel tree")
        if not parts:
            raise self.fail(f"path '{name}' names no file")
        return str(PurePosixPath(*parts))


def _not_utf8(line: str) -> str:
    """The first byte that was not UTF-8 in a line decoded with surrogateescape, as 0xNN, or ''."""
    bad = next((c for c in line if "\udc80" <= c <= "\udcff"), "")
    return f"0x{ord(bad) - 0xDC00:02x}" if bad else ""


def _header_name(rest: str) -> str:
    """The file name of a ---/+++ line: up to a tab (dates follow), or a quoted name."""
    rest = rest.rstrip("\r\n")
    if rest.startswith('"'):
        end = _quote_end(rest)
        return rest[: end + 1] if end > 0 else rest
    return rest.split("\t", 1)[0].rstrip(" ") if "\t" in rest else rest.rstrip(" ")


def _quote_end(s: str) -> int:
    i = 1
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        if s[i] == '"':
            return i
        i += 1
    return -1


def _unquote(name: str, fail) -> str:
    """git's C-style quoting of unusual names ("a/t\\303\\251st.c")."""
    if not (name.startswith('"') and name.endswith('"') and len(name) >= 2):
        return name
    body, out, i = name[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
        elif re.fullmatch(r"[0-3][0-7][0-7]", body[i + 1 : i + 4]):  # one byte: \000 to \377
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
        elif body[i + 1 : i + 2] in _C_ESCAPES:
            out += _C_ESCAPES[body[i + 1]].encode()
            i += 2
        else:
            raise fail(f"bad escape in quoted path {name}")
    return out.decode("utf-8", "surrogateescape")


def _git_names(line: str) -> tuple[str, str] | None:
    """'diff --git a/x b/x' -> ('a/x', 'b/x') when both names are the same file (no spaces trick)."""
    rest = line[len("diff --git ") :]
    half = (len(rest) - 1) // 2
    a, b = rest[:half], rest[half + 1 :]
    if rest[half : half + 1] == " " and a[2:] == b[2:]:
        return a, b
    return None


# -- checking against the real tree ------------------------------------------------------------


def check(diff: FixDiff, tree: str | os.PathLike) -> None:
    """Refuse paths that pass through a symlink (or a non-directory) in the kernel tree."""
    root = Path(tree)
    for rel in diff.paths:
        _check_in_tree(diff, root, rel)


def _check_in_tree(diff: FixDiff, root: Path, rel: str) -> None:
    cur = root
    parts = rel.split("/")
    for depth, part in enumerate(parts, 1):
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return  # the rest does not exist yet: a new file, nothing to follow
        if stat.S_ISLNK(st.st_mode):
            raise diff.error(f"path '{rel}' goes through a symlink in the kernel tree ('{'/'.join(parts[:depth])}')")
        if depth < len(parts) and not stat.S_ISDIR(st.st_mode):
            raise diff.error(f"path '{rel}' goes through a non-directory in the kernel tree")
        if depth == len(parts) and not stat.S_ISREG(st.st_mode):
            raise diff.error(f"path '{rel}' is not a regular file in the kernel tree")


# -- applying ----------------------------------------------------------------------------------


def apply(diff: FixDiff, tree: str | os.PathLike, dest: str | os.PathLike) -> dict[str, Path | None]:
    """Write patched copies of the touched files under dest; the tree is only read.

    Returns tree-relative path -> written file, or None for a file the diff deletes.
    """
    check(diff, tree)
    state: dict[str, str | None] = {}
    for fp in diff.files:
        _apply_file(diff, Path(tree), fp, state)
    return _write(diff, Path(dest), state)


def _read(diff: FixDiff, tree: Path, rel: str, state: dict) -> str | None:
    if rel in state:
        return state[rel]
    try:
        return (tree / rel).read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise diff.error(f"cannot read {rel} in the kernel tree: {exc.strerror}") from None


def _apply_file(diff: FixDiff, tree: Path, fp: FilePatch, state: dict) -> None:
    text: str | None
    if fp.old_path is None:  # added
        if fp.new_path is None:
            raise diff.error("a file section with neither an old nor a new path")
        if _read(diff, tree, fp.new_path, state) is not None:
            raise diff.error(f"{fp.new_path} is created by the diff but already exists")
        text = ""
    else:
        text = _read(diff, tree, fp.old_path, state)
        if text is None:
            raise diff.error(f"{fp.old_path} does not exist in the kernel tree")
    result = apply_hunks(diff, fp, text)
    if fp.old_path:
        state[fp.old_path] = None
    if fp.new_path:
        state[fp.new_path] = result
    elif result:
        raise diff.error(f"deleting {fp.old_path} leaves content behind (diff does not match)")


def apply_hunks(diff: FixDiff, fp: FilePatch, text: str) -> str:
    """Apply every hunk with exact context; a hunk may sit up to MAX_OFFSET lines away."""
    lines = split_lines(text)
    delta, floor = 0, 0
    for n, hunk in enumerate(fp.hunks, 1):
        old, new = hunk.old_lines(), hunk.new_lines()
        expected = hunk.old_start - (1 if hunk.old_len else 0) + delta
        pos = _find(lines, old, expected, floor)
        if pos is None:
            crlf = old and all(ln.endswith("\r\n") for ln in old) and "\r\n" not in text
            hint = " (the diff has CRLF line endings, the file LF: convert the diff)" if crlf else ""
            raise diff.error(f"hunk {n} of {fp.path} ({hunk.header}) does not apply{hint}")
        lines[pos : pos + len(old)] = new
        delta += pos - expected + len(new) - len(old)
        floor = pos + len(new)
    return "".join(lines)


def _find(lines: list[str], old: list[str], expected: int, floor: int) -> int | None:
    for shift in range(MAX_OFFSET + 1):
        for pos in (expected,) if shift == 0 else (expected - shift, expected + shift):
            if floor <= pos <= len(lines) - len(old) and lines[pos : pos + len(old)] == old:
                return pos
    return None


def _write(diff: FixDiff, dest: Path, state: dict) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {}
    for rel, text in state.items():
        if text is None:
            out[rel] = None
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".kgenv-tmp")
        tmp.write_bytes(text.encode("utf-8", "surrogateescape"))
        os.replace(tmp, target)
        out[rel] = target
    return out
