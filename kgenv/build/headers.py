"""The units a diff's header changes reach: every unit of the running kernel whose debug info uses a
changed header. Debug info records code, declarations and types, never macros: a changed macro (or
any preprocessor line) has users kgenv cannot find, so it needs the units named with --tu."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from kgenv.env.headerusers import Index, User

LIMIT = 48  # units one build rebuilds for a header; more is a change to core kernel code
# headers the vDSO is built from: it runs in userspace, has no debug info in vmlinux, and no livepatch reaches it
VDSO = ("include/vdso/", "arch/x86/include/asm/vdso", "arch/x86/include/asm/vgtod.h", "lib/vdso/")


@dataclass
class Reach:
    users: list[User] = field(default_factory=list)
    problem: str = ""  # why the users cannot be found or rebuilt (the refusal's text)
    counts: dict[str, int] = field(default_factory=dict)  # header -> units that use it


def preprocessor_change(original: str, patched: str) -> int:
    """The first patched line (1-based) of a changed preprocessor directive, or 0: a line starting
    with '#' or continuing one ('\\' at the end of the line before), on either side of the change."""
    old, new = original.splitlines(), patched.splitlines()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        if any(_directive(old, i) for i in range(i1, i2)) or any(_directive(new, j) for j in range(j1, j2)):
            return j1 + 1
    return 0


def _directive(lines: list[str], i: int) -> bool:
    while i > 0 and lines[i - 1].rstrip().endswith("\\"):
        i -= 1
    return lines[i].lstrip().startswith("#")


def reach(index: Index, headers: list[str], tree: Path, overlay: Path) -> Reach:
    """The units to rebuild for the changed headers (original files in tree, patched in overlay)."""
    r = Reach()
    for h in headers:
        before = tree / h
        after = overlay / h
        if not after.is_file() or not before.is_file():
            continue  # deleted (refused earlier) or new: no unit of the running kernel includes it
        if h.startswith(VDSO):
            r.problem = f"{h} is used by the vDSO, userspace code the kernel maps as data: no live patch replaces it"
            return r
        old, new = (f.read_text(errors="surrogateescape") for f in (before, after))
        line = preprocessor_change(old, new)
        if line:
            r.problem = (
                f"{h}:{line} changes a preprocessor line; debug info does not record which units use a "
                "macro: name every unit to patch with --tu"
            )
            return r
        found = index.users(h)
        r.counts[h] = len(found)
        r.users = list(dict.fromkeys([*r.users, *found]))
    if len(r.users) > LIMIT:
        counts = ", ".join(f"{h} {n}" for h, n in r.counts.items())
        r.problem = (
            f"the changed header(s) are used by {len(r.users)} units of the running kernel ({counts}); "
            f"kgenv rebuilds at most {LIMIT}: name the units to patch with --tu"
        )
    return r
