"""Fingerprint diff: probe the candidate toolchain and compare it, item by item, with the manifest."""

from __future__ import annotations

import re
import shlex

from kgenv.audit.records import Candidate, Finding
from kgenv.env.toolchain import CompilerId
from kgenv.image.tree import make_command
from kgenv.manifest import Manifest

PROBE_C = "int kgenv_probe(int x) { return x + 1; }\n"
_CONFIG_LINE = re.compile(r"^(?:# )?CONFIG_(\w+)(?:=(.*)| is not set)$")


def script(m: Manifest, cand: Candidate) -> str:
    """Shell lines printing KEY=value facts about the candidate, and DRIFT lines for olddefconfig."""
    cc = shlex.quote(cand.cc or m.make.get("CC", "gcc"))
    make = {**m.make, **cand.make}
    o = shlex.quote(m.kernel.objtree or ".")
    return "\n".join(
        [
            f"echo CC=$({cc} --version 2>/dev/null | head -n1)",
            "echo LD=$(ld --version 2>/dev/null | head -n1)",
            "echo PAHOLE=$(pahole --version 2>/dev/null)",
            "for p in binutils dwarves; do echo PKG_$p=$(dpkg-query -W -f='${Version}' $p 2>/dev/null); done",
            "t=$(mktemp -d)",
            f"printf %s {shlex.quote(PROBE_C)} > $t/probe.c",
            f"{cc} -O2 -c $t/probe.c -o $t/probe.o 2>/dev/null && "
            "echo COMMENT=$(readelf -p .comment $t/probe.o | sed -n 's/^ *\\[ *[0-9a-f]*\\] *//p' | head -n1)",
            f"test -f {o}/.config && echo TREE=ok",
            f"cp {o}/.config $t/recorded.config",
            f"if {shlex.join(make_command(make, m.kernel.objtree, 'olddefconfig', jobs=1))} >$t/olddefconfig.log 2>&1;"
            " then echo OLDDEFCONFIG=ok; else echo OLDDEFCONFIG=failed; tail -n 5 $t/olddefconfig.log; fi",
            f"diff $t/recorded.config {o}/.config | sed -n 's/^\\([<>]\\) /DRIFT\\1 /p' | head -n 400",
            f"cp $t/recorded.config {o}/.config",  # a host tree is reused by the compile that follows
            "rm -rf $t",
        ]
    )


def parse(output: str) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """(facts, drift) from the probe's output; drift maps CONFIG key -> (recorded, candidate)."""
    facts: dict[str, str] = {}
    old: dict[str, str] = {}
    new: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith(("DRIFT< ", "DRIFT> ")):
            m = _CONFIG_LINE.match(line[7:].strip())
            if m:
                value = m[2] if m[2] is not None else "n"
                (old if line[5] == "<" else new)[m[1]] = value[1:-1] if value[:1] == value[-1:] == '"' else value
        elif "=" in line and re.match(r"^[A-Z][A-Z_]*(?:_[\w.+-]+)?=", line):
            key, _, value = line.partition("=")
            facts.setdefault(key, value.strip())
    drift = {
        k: (old.get(k, "(absent)"), new.get(k, "(absent)"))
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    }
    return facts, drift


def compiler_findings(expected: str, got: str) -> list[Finding]:
    """Upstream version, package release and vendor compared by meaning, not by spelling."""
    try:
        a = CompilerId.parse(expected)
    except Exception:
        return [Finding("compiler", expected, got, expected == got, "version", "recorded string not parsed")]
    try:
        b = CompilerId.parse(got)
    except Exception:
        return [
            Finding(
                "compiler",
                expected,
                got or "(no compiler answered)",
                False,
                "version",
                "candidate string not in 'gcc-N (Vendor version) X.Y.Z' form",
            )
        ]
    plain = {"GCC", "GNU", ""}
    same_vendor = a.vendor == b.vendor or {a.vendor, b.vendor} <= plain
    return [
        Finding("compiler.version", a.upstream, b.upstream, a.upstream == b.upstream, "version"),
        Finding(
            "compiler.package-release",
            a.package_version or "(none)",
            b.package_version or "(none)",
            a.package_version == b.package_version,
            "package-release",
            "same upstream compiler, another distro package build"
            if a.upstream == b.upstream and a.package_version != b.package_version
            else "",
        ),
        Finding(
            "compiler.vendor",
            a.vendor,
            b.vendor,
            same_vendor,
            "vendor",
            "(GNU) and (GCC) spell the same upstream build" if same_vendor and a.vendor != b.vendor else "",
        ),
    ]


def _binutils(m: Manifest, facts: dict[str, str]) -> list[Finding]:
    want = m.fingerprint.get("linux_compiler", "").rsplit(" ", 1)[-1]
    got = facts.get("LD", "").rsplit(" ", 1)[-1]
    want_pkg, got_pkg = m.toolchain.get("binutils", ""), facts.get("PKG_binutils", "")
    out = [Finding("binutils.version", want or "?", got or "(none)", bool(want) and want == got, "version")]
    if want_pkg:
        out.append(
            Finding("binutils.package-release", want_pkg, got_pkg or "(none)", want_pkg == got_pkg, "package-release")
        )
    return out


def _pahole(m: Manifest, facts: dict[str, str]) -> list[Finding]:
    raw = m.fingerprint.get("pahole_version", "0")
    want = f"v{int(raw) // 100}.{int(raw) % 100}" if raw.isdigit() and int(raw) else ""
    if not want:
        return []
    got = facts.get("PAHOLE", "")
    want_pkg, got_pkg = m.toolchain.get("dwarves", ""), facts.get("PKG_dwarves", "")
    out = [Finding("pahole.version", want, got or "(none)", want == got, "version", "BTF is generated by pahole")]
    if want_pkg:
        out.append(
            Finding("pahole.package-release", want_pkg, got_pkg or "(none)", want_pkg == got_pkg, "package-release")
        )
    return out


def findings(m: Manifest, cand: Candidate, output: str) -> list[Finding]:
    """Every fingerprint item, same or not, in a fixed order."""
    facts, drift = parse(output)
    out = compiler_findings(m.fingerprint["cc_version_text"], facts.get("CC", ""))
    comment = facts.get("COMMENT", "")
    out.append(
        Finding(
            "compiler.comment",
            m.fingerprint.get("comment", ""),
            comment or "(none)",
            comment == m.fingerprint.get("comment", ""),
            "comment",
            ".comment of a probe object",
        )
    )
    out += _binutils(m, facts) + _pahole(m, facts)
    for key in sorted(cand.make):
        if cand.make[key] != m.make.get(key, ""):
            out.append(Finding(f"make.{key}", m.make.get(key, "(unset)"), cand.make[key], False, "make"))
    if facts.get("TREE") != "ok":
        out.append(Finding("config", "prepared tree", "(no prepared tree in the candidate)", False, "probe"))
    elif facts.get("OLDDEFCONFIG") != "ok":
        out.append(Finding("config", "olddefconfig runs", "olddefconfig failed", False, "probe"))
    elif not drift:
        out.append(Finding("config", "recorded .config", "unchanged by olddefconfig", True, "config-drift"))
    for key, (old, new) in drift.items():
        out.append(Finding(f"config.{key}", old, new, False, "config-drift", "olddefconfig with the candidate"))
    return out
