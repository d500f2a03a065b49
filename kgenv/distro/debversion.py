"""Debian version comparison (the dpkg algorithm), so versions are ordered, not string-compared."""

import re
from functools import cmp_to_key

_PART = re.compile(r"(\D*)(\d*)")


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _cmp_str(a: str, b: str) -> int:
    """Compare non-digit runs: letters sort before non-letters, '~' before everything."""
    for i in range(max(len(a), len(b))):
        oa = _order(a[i]) if i < len(a) else 0
        ob = _order(b[i]) if i < len(b) else 0
        if oa != ob:
            return -1 if oa < ob else 1
    return 0


def _cmp_part(a: str, b: str) -> int:
    pa, pb = _PART.findall(a), _PART.findall(b)
    for i in range(max(len(pa), len(pb))):
        sa, na = pa[i] if i < len(pa) else ("", "")
        sb, nb = pb[i] if i < len(pb) else ("", "")
        if r := _cmp_str(sa, sb):
            return r
        ia, ib = int(na or 0), int(nb or 0)
        if ia != ib:
            return -1 if ia < ib else 1
    return 0


def split(v: str) -> tuple[int, str, str]:
    """(epoch, upstream, revision) of a Debian version string."""
    epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare(a: str, b: str) -> int:
    """-1, 0 or 1, as `dpkg --compare-versions` orders a and b."""
    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _cmp_part(ua, ub) or _cmp_part(ra, rb)


sort_key = cmp_to_key(compare)
