"""Presenters of an AuditReport (and of a fleet of them): terminal text, JSON, JUnit XML, HTML."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from kgenv.audit.records import TU_BUILD_FAILED, AuditReport, Candidate
from kgenv.errors import UserError
from kgenv.report import html as H
from kgenv.report.junit import Case, Suite, to_xml

FORMATS = ("text", "json", "junit", "html")
GREEN, RED, AMBER = "#2da44e", "#cf222e", "#d4a72c"


@dataclass(frozen=True)
class FleetRow:
    """One kernel of `audit --all`: its report, or the error that stopped it."""

    env: str
    release: str
    report: AuditReport | None = None
    error: str = ""

    @property
    def exit_code(self) -> int:
        return self.report.exit_code if self.report else 2

    def to_dict(self) -> dict:
        """One flat record; an env that could not be audited has the same keys, zeroed."""
        if self.report is None:
            return {
                "env": self.env,
                "release": self.release,
                "verdict": "error",
                "exit_code": 2,
                **dict.fromkeys(
                    (
                        "tus",
                        "tus_identical",
                        "functions",
                        "percent_identical",
                        "differing",
                        "unmatched",
                        "fingerprint_differences",
                        "config_drift",
                    ),
                    0,
                ),
                "top_function": "",
                "error": self.error,
                "module_tus": 0,
            }
        s = self.report.summary
        top = self.report.top(1)
        return {
            "env": self.env,
            "release": self.release,
            "verdict": self.report.verdict,
            "exit_code": self.report.exit_code,
            "tus": s["tus"],
            "tus_identical": s["tus_identical"],
            "functions": s["functions"],
            "percent_identical": s["percent_identical"],
            "differing": s["differing"],
            "unmatched": s["unmatched"],
            "fingerprint_differences": s["fingerprint_differences"],
            "config_drift": len(self.report.config_drift),
            "top_function": top[0].name if top else "",
            "error": "",
            "module_tus": s["module_tus"],
        }


def fleet_exit(rows: list[FleetRow]) -> int:
    """2 if any kernel could not be audited, else 1 if any mismatches, else 0."""
    codes = [r.exit_code for r in rows]
    return 2 if 2 in codes or not codes else max(codes)


# ---- text -------------------------------------------------------------------------------------


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def text(r: AuditReport, limit: int = 10) -> str:
    s = r.summary
    out = [f"kgenv audit: {r.env} ({r.release}) against {r.candidate.label}", "", "Fingerprint"]
    for f in r.findings:
        mark = "ok  " if f.same else "DIFF"
        note = f"  ({f.note})" if f.note and (not f.same or f.kind == "vendor") else ""
        out.append(f"  {mark} {_cut(f.item, 38):<38} {_cut(f.expected, 32):<32} {_cut(f.candidate, 32):<32}{note}")
    out += [
        "",
        f"  {'TU':<44} {'object':<16} {'status':<13} {'fns':>5} {'ident':>6} {'differ':>6} {'unmat':>6} {'%ident':>7}",
    ]
    for t in r.tus:
        out.append(
            f"  {_cut(t.tu, 44):<44} {_cut(t.object or '?', 16):<16} {t.status:<13} {t.compared:>5} "
            f"{t.identical:>6} {t.differing:>6} {t.unmatched:>6} {t.percent_identical:>7.1f}"
        )
        if t.status == TU_BUILD_FAILED:
            out.append(f"      {_cut(t.error.splitlines()[0] if t.error else '', 110)}")
    top = r.top(limit)
    if top:
        out += ["", "Top differing functions"]
        for d in top:
            where = f"+{d.offset:#x}: {d.object_insn} | shipped: {d.binary_insn}" if d.offset >= 0 else d.detail
            out.append(f"  {_cut(d.name, 36):<36} {_cut(d.tu, 30):<30} {d.reason:<22} {_cut(where, 120)}")
    out += [
        "",
        f"{s['tus']} TUs: {s['tus'] - s['module_tus']} of vmlinux, {s['module_tus']} of "
        f"{len({t.object for t in r.tus if t.is_module})} module(s)",
        f"{s['identical']}/{s['functions']} functions identical ({s['percent_identical']:.1f} %), "
        f"{s['differing']} differ, {s['unmatched']} unmatched, {s['skipped']} not comparable; "
        f"{s['tus_identical']}/{s['tus']} TUs reproduce; {s['fingerprint_differences']} fingerprint "
        f"difference(s); {r.timings.get('total_s', 0):.0f} s",
        f"verdict: {r.verdict.upper()} (exit {r.exit_code})",
    ]
    return "\n".join(out) + "\n"


def fleet_text(cand: str, rows: list[FleetRow]) -> str:
    out = [
        f"kgenv audit --all against {cand}",
        "",
        f"  {'env':<32} {'release':<22} {'verdict':<11} {'%ident':>7} {'differ':>6} {'TUs ok':>7} {'fp diff':>7}",
    ]
    for row in rows:
        d = row.to_dict()
        if row.report is None:
            out.append(f"  {row.env:<32} {row.release:<22} {'error':<11} {_cut(row.error, 60)}")
            continue
        out.append(
            f"  {row.env:<32} {row.release:<22} {d['verdict']:<11} {d['percent_identical']:>7.1f} "
            f"{d['differing']:>6} {str(d['tus_identical']) + '/' + str(d['tus']):>7} "
            f"{d['fingerprint_differences']:>7}"
        )
    return "\n".join(out + ["", f"exit {fleet_exit(rows)}"]) + "\n"


# ---- JSON -------------------------------------------------------------------------------------


def as_json(r: AuditReport) -> str:
    return json.dumps(r.to_dict(), indent=1) + "\n"


def fleet_json(cand: dict, rows: list[FleetRow]) -> str:
    return (
        json.dumps(
            {"candidate": cand, "exit_code": fleet_exit(rows), "envs": [row.to_dict() for row in rows]}, indent=1
        )
        + "\n"
    )


# ---- JUnit ------------------------------------------------------------------------------------


def _suite(r: AuditReport) -> Suite:
    by_tu: dict[str, list] = {}
    for d in r.differing:
        by_tu.setdefault(d.tu, []).append(d)
    cases = []
    per_tu = r.timings.get("compile_s", 0) / max(len(r.tus), 1)
    for t in r.tus:
        props = {
            "object": t.object,
            "identical": str(t.identical),
            "differing": str(t.differing),
            "unmatched": str(t.unmatched),
        }
        if t.status == TU_BUILD_FAILED:
            cases.append(
                Case(
                    t.tu,
                    r.env,
                    per_tu,
                    error=f"{t.tu}: no object",
                    details=t.error,
                    kind="build-failed",
                    properties=props,
                )
            )
        elif not t.ok:
            diffs = by_tu.get(t.tu, [])
            names = ", ".join(d.name for d in diffs[:20]) + (" …" if len(diffs) > 20 else "")
            lines = [
                f"{d.name}: {d.outcome} ({d.reason})"
                + (
                    f" at +{d.offset:#x}: rebuilt `{d.object_insn}` vs shipped `{d.binary_insn}`"
                    if d.offset >= 0
                    else f" {d.detail}"
                )
                for d in diffs
            ]
            cases.append(
                Case(
                    t.tu,
                    r.env,
                    per_tu,
                    failure=f"{t.differing + t.unmatched} of {t.compared} functions differ: {names}",
                    details="\n".join(lines),
                    kind="mismatch",
                    properties=props,
                )
            )
        else:
            cases.append(
                Case(t.tu, r.env, per_tu, properties=props, stdout=f"{t.identical}/{t.compared} functions identical")
            )
    props = {
        "candidate": r.candidate.label,
        "verdict": r.verdict,
        **{f"fingerprint.{f.item}": f"{f.expected} -> {f.candidate}" for f in r.findings if not f.same},
    }
    return Suite(
        f"kgenv audit {r.env} vs {r.candidate.label}",
        tuple(cases),
        time.strftime("%Y-%m-%dT%H:%M:%S"),
        socket.gethostname(),
        props,
    )


def junit(r: AuditReport) -> str:
    return to_xml([_suite(r)], "kgenv audit")


def fleet_junit(rows: list[FleetRow]) -> str:
    suites = []
    for row in rows:
        if row.report is not None:
            suites.append(_suite(row.report))
        else:
            suites.append(
                Suite(
                    f"kgenv audit {row.env}",
                    (Case("audit", row.env, error=row.error or "error", details=row.error, kind="error"),),
                )
            )
    return to_xml(suites, "kgenv audit --all")


# ---- HTML -------------------------------------------------------------------------------------


def _chart(r: AuditReport) -> H.Raw:
    tus = list(r.tus)
    return H.stacked_bars(
        [f"{t.tu} [{t.object}]" if t.is_module else t.tu for t in tus],
        [
            H.Series("identical", GREEN, tuple(t.identical for t in tus)),
            H.Series("differing", RED, tuple(t.differing for t in tus)),
            H.Series("unmatched", AMBER, tuple(t.unmatched for t in tus)),
        ],
        title=f"functions per TU: {r.env} vs {r.candidate.label}",
    )


def _disasm(r: AuditReport, max_tus: int = 6) -> list:
    objects = {t.tu: t.object for t in r.tus}
    out, seen = [], []
    for row in r.disasm:
        if row.tu not in seen:
            seen.append(row.tu)
    for tu in seen[:max_tus]:
        rows = [x for x in r.disasm if x.tu == tu]
        diff = next((d for d in r.differing if d.tu == tu and d.name == rows[0].function), None)
        firsts = next((i for i, x in enumerate(rows) if not x.same), -1)
        out.append(H.tag("h3", f"{rows[0].function} — {tu}"))
        if diff:
            out.append(H.tag("p", f"{diff.reason}: {diff.detail}" if diff.detail else diff.reason, class_="muted"))
        out.append(
            H.side_by_side(
                "rebuilt by the candidate",
                f"shipped {objects.get(tu) or 'binary'}",
                [
                    (x.object, x.binary, "same" if x.same else "first" if i == firsts else "")
                    for i, x in enumerate(rows)
                ],
                [f"+{x.offset:#x}" if x.offset >= 0 else "" for x in rows],
            )
        )
    return out


def html(r: AuditReport) -> str:
    s = r.summary
    good = r.verdict == "reproduces"
    findings = H.table(
        ["", "item", "expected (manifest)", "candidate", "note"],
        [
            [H.badge("same" if f.same else "differs", f.same), f.item, f.expected, f.candidate, f.note]
            for f in r.findings
        ],
    )
    tus = H.table(
        [
            "TU",
            "object",
            "status",
            "compared",
            "identical",
            "differing",
            "unmatched",
            "% identical",
            "first difference",
        ],
        [
            [
                t.tu,
                t.object,
                t.status,
                t.compared,
                t.identical,
                t.differing,
                t.unmatched,
                f"{t.percent_identical:.1f}",
                f"{t.first_function} ({t.first_reason})" if t.first_function else (t.error[:200] or ""),
            ]
            for t in r.tus
        ],
        numeric={3, 4, 5, 6, 7},
    )
    top = H.table(
        ["function", "TU", "object", "outcome", "reason", "size", "first differing instructions"],
        [
            [
                H.tag("code", d.name),
                d.tu,
                d.object,
                d.outcome,
                d.reason,
                d.size,
                H.tag("code", f"+{d.offset:#x}: {d.object_insn} | shipped: {d.binary_insn}")
                if d.offset >= 0
                else d.detail,
            ]
            for d in r.top(25)
        ],
        numeric={5},
    )
    body = [
        H.tag("h1", f"kgenv audit — {r.env}"),
        H.tag("p", [H.badge(r.verdict.upper(), good), f"  {r.release} against {r.candidate.label}"]),
        H.table(
            [
                "functions identical",
                "differing",
                "unmatched",
                "not comparable",
                "TUs reproduced",
                "fingerprint differences",
                "time",
            ],
            [
                [
                    f"{s['identical']}/{s['functions']} ({s['percent_identical']:.1f} %)",
                    s["differing"],
                    s["unmatched"],
                    s["skipped"],
                    f"{s['tus_identical']}/{s['tus']}",
                    s["fingerprint_differences"],
                    f"{r.timings.get('total_s', 0):.0f} s",
                ]
            ],
        ),
        H.tag("h2", "Identical vs differing functions per TU"),
        _chart(r),
        H.tag("h2", "Fingerprint"),
        findings,
        H.tag("h2", "Translation units"),
        tus,
    ]
    if r.differing:
        body += [
            H.tag("h2", "Top differing functions"),
            top,
            H.tag("h2", "First difference, side by side"),
            *_disasm(r),
        ]
    body.append(
        H.tag(
            "p",
            f"candidate image {r.candidate.image or '(host)'}; make overrides "
            f"{r.candidate.to_dict()['make_overrides'] or 'none'}; sample {r.sample}",
            class_="muted",
        )
    )
    return H.page(f"kgenv audit {r.env}", body)


def fleet_html(cand: str, rows: list[FleetRow]) -> str:
    ok = [(row.env, row.report.summary) for row in rows if row.report]
    chart = H.stacked_bars(
        [env for env, _ in ok],
        [
            H.Series("identical", GREEN, tuple(s["identical"] for _, s in ok)),
            H.Series("differing", RED, tuple(s["differing"] for _, s in ok)),
            H.Series("unmatched", AMBER, tuple(s["unmatched"] for _, s in ok)),
        ],
        title=f"functions per kernel against {cand}",
    )
    table = H.table(
        [
            "env",
            "release",
            "verdict",
            "% identical",
            "differing",
            "TUs reproduced",
            "fingerprint diff",
            "top differing function",
        ],
        [
            [
                row.env,
                row.release,
                H.badge(d["verdict"], d["verdict"] == "reproduces"),
                d.get("percent_identical", ""),
                d.get("differing", ""),
                f"{d.get('tus_identical', '')}/{d.get('tus', '')}",
                d.get("fingerprint_differences", ""),
                d.get("top_function", "") or d.get("error", ""),
            ]
            for row in rows
            for d in [row.to_dict()]
        ],
        numeric={3, 4, 6},
    )
    return H.page("kgenv audit --all", [H.tag("h1", f"kgenv audit --all against {cand}"), table, chart])


def render(r: AuditReport, fmt: str) -> str:
    return {"text": text, "json": as_json, "junit": junit, "html": html}[fmt](r)


def render_fleet(cand: Candidate | dict, rows: list[FleetRow], fmt: str) -> str:
    label = cand["label"] if isinstance(cand, dict) else cand.label
    if fmt == "json":
        return fleet_json(cand if isinstance(cand, dict) else cand.to_dict(), rows)
    return {
        "text": lambda: fleet_text(label, rows),
        "junit": lambda: fleet_junit(rows),
        "html": lambda: fleet_html(label, rows),
    }[fmt]()


def load(path: Path) -> AuditReport:
    """A saved JSON report; a one-line UserError for anything that is not one."""
    try:
        return AuditReport.from_dict(json.loads(Path(path).read_text()))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a kgenv audit JSON report ({type(e).__name__}: {e})") from None
