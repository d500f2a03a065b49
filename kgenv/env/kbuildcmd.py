"""Kbuild's `.*.cmd` files: the exact command that made each object, and what they reveal of the make line.

Kbuild writes `cmd_<target> := <command>` (`savedcmd_` from 6.3) beside every target it builds.
Comparing a vendor's files with the ones the env image writes for the same targets proves the
rebuilt make line; the one make variable that lands as a block inside the compiler flags,
KCFLAGS, is read off the vendor's line with a marker (see derive_kcflags).

The one reader of these files: the snapshot, the build stage (a TU's module and flags) and cfacts,
which imports it inside the env image's own Python, so it needs the standard library only.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from kgenv.errors import RefusedError, ToolError

CMD_RE = re.compile(r"^(?:saved)?cmd_(\S+) := (.*)$", re.M)
SOURCE_RE = re.compile(r"^source_(\S+) := (\S+)$", re.M)
KCFLAGS_MARK = "-DKGENV_KCFLAGS_MARK"


@dataclass(frozen=True)
class CmdDiff:
    file: str  # relative to the O= dir
    kernel: bool  # a compile of kernel code (host tools and scripts are not)
    detail: str


def find(build_dir: Path) -> dict[str, Path]:
    """Every regular `.*.cmd` file under build_dir (symlinks are not followed), by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(build_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", ".hg", ".svn"))
        for f in filenames:
            if f.startswith(".") and f.endswith(".cmd"):
                p = Path(dirpath) / f
                if p.is_file() and not p.is_symlink():
                    out[str(p.relative_to(build_dir))] = p
    return out


def head(path: Path) -> str:
    """The part of a .cmd file holding its cmd_ and source_ lines: Kbuild writes them first (the
    deps list after them can be large); tools/build writes its command last, so then all of it."""
    lines = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            lines.append(line)
            if line.startswith("source_") or len(lines) >= 4:
                break
        text = "".join(lines)
        return text if CMD_RE.search(text) else text + f.read()


def command(text: str) -> str | None:
    """The recorded command of a .cmd file's text, still make-escaped (see tokens)."""
    m = CMD_RE.search(text)
    return m.group(2).strip() if m else None


def read_command(path: Path | str) -> list[str]:
    """The compile a .cmd file records: its words up to the first `;` (Kbuild chains objtool
    and the like after the compiler); a one-line ToolError naming the file when there is none."""
    try:
        cmd = command(head(Path(path)))
    except OSError as e:
        raise ToolError(f"{path}: cannot read: {e.strerror or e}") from None
    words = first_command(tokens(cmd)) if cmd else []
    if not words:
        raise ToolError(f"{path}: no compile command recorded (a cmd_ or savedcmd_ line)")
    return words


def make_unescape(value: str) -> str:
    """Undo Kbuild's make-cmd escaping, left to right: '$$' was '$', '$(pound)' was '#'."""
    return re.sub(r"\$(\$|\(pound\))", lambda m: "$" if m[1] == "$" else "#", value)


def make_escape(text: str) -> str:
    """make_unescape's inverse, for text make reads again (a Kbuild file, a make-line variable);
    `$(pound)` as Kbuild writes it itself (its Kbuild.include defines `pound`)."""
    return text.replace("$", "$$").replace("#", "$(pound)")


def tokens(cmd: str) -> list[str]:
    """A recorded command's words as the shell gets them: make escapes undone, then split as the
    shell does (quotes removed, an older Kbuild's '\\#' is '#', and ';' is a word even when glued)."""
    text = make_unescape(cmd)
    lex = shlex.shlex(text, posix=True, punctuation_chars=";")
    lex.whitespace_split, lex.commenters = True, ""
    try:
        return list(lex)
    except ValueError:  # unbalanced quotes: no shell ran it, but compare what is there
        return text.split()


def first_command(words: list[str]) -> list[str]:
    """The words before the first `;`."""
    return words[: words.index(";")] if ";" in words else words


def is_kernel_compile(words: list[str]) -> bool:
    return "-D__KERNEL__" in words and "-nostdinc" in words


def compiler(words: list[str]) -> tuple[list[str], str]:
    """(wrappers such as ccache, compiler program) of a compile command."""
    head = []
    for w in words:
        if w.startswith("-"):
            break
        head.append(w)
    return head[:-1], (head[-1] if head else "")


def srctree(text: str) -> str:
    """The absolute source tree a .cmd's `source_` line reveals ("" for in-tree relative paths)."""
    m = SOURCE_RE.search(text)
    if not m or not m.group(2).startswith("/"):
        return ""
    target, source = m.groups()
    rel = os.path.join(os.path.dirname(target), os.path.basename(source))
    return source[: -len(rel) - 1] if source.endswith("/" + rel) else ""


def kernel_cc(cmds: dict[str, str]) -> str:
    """The compiler program the vendor's kernel objects were compiled with ("" if none recorded)."""
    for name in sorted(cmds):
        words = tokens(cmds[name])
        if is_kernel_compile(words):
            return os.path.basename(compiler(words)[1])
    return ""


def _strip_wrappers(words: list[str]) -> list[str]:
    wrappers, _ = compiler(words)
    return words[len(wrappers) :]


def first_difference(vendor: list[str], env: list[str]) -> str:
    """Where two token lists part, in words."""
    i = 0
    while i < min(len(vendor), len(env)) and vendor[i] == env[i]:
        i += 1
    j = 0
    while j < min(len(vendor), len(env)) - i and vendor[-1 - j] == env[-1 - j]:
        j += 1
    extra, missing = vendor[i : len(vendor) - j], env[i : len(env) - j]
    return (
        f"the vendor's command has {' '.join(extra) or 'nothing'} where the env's has "
        f"{' '.join(missing) or 'nothing'} (after {' '.join(vendor[max(0, i - 2) : i]) or 'the start'})"
    )


def compare(vendor: dict[str, str], env: dict[str, str]) -> tuple[int, list[CmdDiff]]:
    """(files compared, differences) for the targets both trees built."""
    both = sorted(set(vendor) & set(env))
    diffs = []
    for name in both:
        v, e = _strip_wrappers(tokens(vendor[name])), _strip_wrappers(tokens(env[name]))
        if v != e:
            diffs.append(CmdDiff(name, is_kernel_compile(v) or is_kernel_compile(e), first_difference(v, e)))
    return len(both), diffs


def derive_kcflags(vendor: str, marked: str, where: str) -> str:
    """KCFLAGS of the vendor's build: its command minus what the env's command has around the marker.

    `marked` is the env's command for the same target built with KCFLAGS=KCFLAGS_MARK, i.e.
    prefix + [mark] + suffix; the vendor's must be prefix + K + suffix.
    """
    v, m = _strip_wrappers(tokens(vendor)), _strip_wrappers(tokens(marked))
    if m.count(KCFLAGS_MARK) != 1:
        raise RefusedError(f"{where}: the env's rebuild does not show where KCFLAGS go")
    at = m.index(KCFLAGS_MARK)
    prefix, suffix = m[:at], m[at + 1 :]
    if len(v) < len(prefix) + len(suffix) or v[: len(prefix)] != prefix or v[len(v) - len(suffix) :] != suffix:
        bare = prefix + suffix
        raise RefusedError(
            f"{where}: compiler flags differ beyond KCFLAGS: {first_difference(v, bare)}; "
            "pass the make-line variables with --make VAR=VALUE"
        )
    # the value goes on make's command line, where '$' and '#' need make's escapes again
    return make_escape(shlex.join(v[len(prefix) : len(v) - len(suffix)]))
