"""Write a matrix to OUTDIR: matrix.json (two levels), JUnit XML (suite per kernel, case per fix), HTML."""

from __future__ import annotations

import json
from pathlib import Path

from kgenv.farm.job import BOOT_FAILED, BUILT, ERROR, NOT_RUN, REFUSED
from kgenv.farm.matrix import FILE, Cell, Matrix
from kgenv.fsutil import write_atomic
from kgenv.report import junit
from kgenv.report.html import Raw, esc, page, tag

JUNIT = "matrix.junit.xml"
HTML = "matrix.html"
LOG_TAIL = 60  # lines of a failing job's log carried in its JUnit failure
COLOURS = {BUILT: "#1f883d", REFUSED: "#0969da", BOOT_FAILED: "#cf222e", ERROR: "#82071e", NOT_RUN: "#8c959f"}


def write(m: Matrix, outdir: Path) -> None:
    write_atomic(outdir / FILE, json.dumps(m.to_dict(), indent=1, sort_keys=True) + "\n")
    write_atomic(outdir / JUNIT, junit_xml(m, outdir))
    write_atomic(outdir / HTML, html(m))


# -- JUnit ------------------------------------------------------------------------------------


def junit_xml(m: Matrix, outdir: Path) -> str:
    suites = [
        junit.Suite(
            k.env,
            tuple(_case(c, outdir) for c in m.cells if c.kernel == k.env),
            timestamp=m.farm.get("started", "")[:19],
            properties={"release": k.release, "image_id": k.image_id, "build_id": k.build_id},
        )
        for k in m.kernels
    ]
    return junit.to_xml(suites, name=f"kgenv farm {Path(m.farm.get('plan', '')).name}")


def _case(c: Cell, outdir: Path) -> junit.Case:
    message = f"expected {c.expected}, got {c.outcome}" + (f": {c.reason}" if c.reason else "")
    failed = not c.as_expected
    broken = c.outcome in (ERROR, NOT_RUN)
    return junit.Case(
        name=c.fix,
        classname=f"kgenv.farm.{c.kernel}",
        time=c.seconds,
        failure=message if failed and not broken else None,
        error=message if broken else None,
        kind=c.outcome,
        details=_log_tail(outdir, c) if failed else "",
        properties={
            "outcome": c.outcome,
            "key": c.key,
            "worker": c.worker,
            "cached": str(c.cached).lower(),
            "module_sha256": c.module_sha256,
            "report": c.report,
            "log": c.log,
        },
    )


def _log_tail(outdir: Path, c: Cell) -> str:
    if not c.log or not (outdir / c.log).is_file():
        return ""
    lines = (outdir / c.log).read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL:])


# -- HTML -------------------------------------------------------------------------------------

CSS = """
td.cell{padding:0;min-width:120px}td.cell a{display:block;padding:6px 8px;color:#fff;text-decoration:none}
td.cell.unexpected a{outline:3px solid #ff8182;outline-offset:-3px}td.cell small{opacity:.85}
.legend span{margin-right:10px}
"""


def html(m: Matrix) -> str:
    """Kernels × fixes, each cell coloured by outcome and linking the job's report (or log)."""
    n = m.counts()
    fixes = [f.name for f in m.fixes]
    rows = [
        [Raw(f'{esc(k.env)}<br><small class="muted mono">{esc(k.image_id[7:19])}</small>')]
        + [_cell(m.cell(k.env, f)) for f in fixes]
        for k in m.kernels
    ]
    summary = (
        f"{n['jobs']} jobs: {n['as_expected']} as expected, {n['jobs'] - n['as_expected']} not; "
        f"{n['cached']} from the cache; engine {m.farm.get('engine', '')}; exit code {m.exit_code}"
    )
    headers = ["kernel"] + [
        Raw(f'{esc(f.name)}<br><small class="muted">expect {esc(f.expected)}</small>') for f in m.fixes
    ]
    legend = tag(
        "p",
        [tag("span", Raw(f'<span class="badge" style="background:{c}">{esc(o)}</span>')) for o, c in COLOURS.items()]
        + ["a red outline: not the expected outcome"],
        class_="legend",
    )
    body = [
        tag("h1", "kgenv farm matrix"),
        tag("p", summary),
        tag(
            "p",
            f"plan {m.farm.get('plan', '')} (sha256 {m.farm.get('plan_sha256', '')[:12]}), "
            f"kgenv {m.farm.get('kgenv', '')}, started {m.farm.get('started', '')}",
            class_="muted",
        ),
        legend,
        _table(headers, rows),
    ]
    return page("kgenv farm matrix", body, CSS)


def _table(headers, rows) -> Raw:
    """Like report.html.table, but the job cells arrive as whole <td> elements (they carry colour)."""
    head = tag("tr", [tag("th", h) for h in headers])
    body = [tag("tr", [tag("td", r[0]), *r[1:]]) for r in rows]
    return tag("table", [tag("thead", head), tag("tbody", body)])


def _cell(c: Cell | None) -> Raw:
    if c is None:
        return tag("td", "")
    colour = COLOURS.get(c.outcome, "#59636e")
    took = f"{c.seconds:.1f} s" if c.seconds < 10 else f"{c.seconds:.0f} s"
    label = [
        esc(c.outcome if c.as_expected else f"{c.outcome} (expected {c.expected})"),
        Raw("<br>"),
        tag("small", took + (" · cached" if c.cached else "") + (f" · {c.worker}" if c.worker else "")),
    ]
    link = c.report or c.log
    inner = tag("a", label, href=link or None, title=c.reason or c.outcome)
    cls = "cell" + ("" if c.as_expected else " unexpected")
    return Raw(f'<td class="{cls}" style="background:{colour}">{inner}</td>')
