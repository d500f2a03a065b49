"""Self-contained HTML building blocks: escaping, a page, tables, a stacked-bar SVG chart, side-by-side code.

No external assets (no scripts, fonts or stylesheets from elsewhere), so a page opens anywhere,
from a CI artifact as well as a file. Every string a caller passes is escaped unless wrapped in Raw.
"""

from __future__ import annotations

import html
from collections.abc import Collection
from dataclasses import dataclass


class Raw(str):
    """Markup already built by these helpers: inserted as is."""


def esc(value) -> Raw:
    """Escape text (and attribute values: quotes too); Raw passes through."""
    if isinstance(value, Raw):
        return value
    return Raw(html.escape("" if value is None else str(value), quote=True))


def join(parts) -> Raw:
    return Raw("".join(esc(p) for p in parts))


def tag(name: str, content="", **attrs) -> Raw:
    """<name attrs>content</name>; attribute names use _ for - and a trailing _ for keywords (class_)."""
    attr = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    if isinstance(content, (list, tuple)):
        content = join(content)
    return Raw(f"<{name}{attr}>{esc(content)}</{name}>")


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232b;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dee4;padding-bottom:4px}
table{border-collapse:collapse;margin:6px 0;background:#fff}
th,td{border:1px solid #d8dee4;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600}
.ok{background:#1f883d}.bad{background:#cf222e}.warn{background:#bf8700}.muted{color:#59636e}
tr.same td{color:#59636e}tr.first td{background:#ffebe9;font-weight:600}
.sbs td{white-space:pre;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
"""


def page(title: str, body, css: str = "") -> str:
    """A whole HTML5 document with the shared style inlined."""
    return (
        "<!DOCTYPE html>\n"
        + tag(
            "html",
            [
                Raw('<head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'),
                tag("title", title),
                Raw(f"<style>{CSS}{css}</style></head>"),
                tag("body", body),
            ],
            lang="en",
        )
        + "\n"
    )


def badge(text: str, good: bool | None) -> Raw:
    return tag("span", text, class_="badge " + ("ok" if good else "warn" if good is None else "bad"))


def table(
    headers: list[str],
    rows: list[list],
    row_classes: list[str] | None = None,
    numeric: Collection[int] = frozenset(),
    class_: str | None = None,
) -> Raw:
    """A table; cells are escaped text or Raw; columns in `numeric` are right-aligned."""
    head = tag("tr", [tag("th", h) for h in headers])
    body = []
    for i, row in enumerate(rows):
        cells = [tag("td", c, class_="num" if j in numeric else None) for j, c in enumerate(row)]
        body.append(tag("tr", cells, class_=row_classes[i] if row_classes else None))
    return tag("table", [tag("thead", head), tag("tbody", body)], class_=class_)


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    values: tuple[float, ...]


def stacked_bars(
    labels: list[str],
    series: list[Series],
    title: str = "",
    width: int = 900,
    bar: int = 18,
    gap: int = 6,
    label_width: int = 260,
) -> Raw:
    """A horizontal stacked bar per label (e.g. identical vs differing functions per TU), as inline SVG."""
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top = max(totals or [0]) or 1
    plot = width - label_width - 60
    legend_h = 26
    height = legend_h + len(labels) * (bar + gap) + 10
    out = [
        Raw(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" font-family="system-ui,sans-serif" font-size="12">'
        ),
        tag("title", title or "chart"),
    ]
    lx = label_width  # the legend's cursor
    for s in series:
        out.append(Raw(f'<rect x="{lx}" y="4" width="12" height="12" fill="{esc(s.color)}"/>'))
        out.append(Raw(f'<text x="{lx + 16}" y="14">{esc(s.name)}</text>'))
        lx += 24 + 8 * len(s.name)
    for i, label in enumerate(labels):
        y = legend_h + i * (bar + gap)
        out.append(Raw(f'<text x="{label_width - 8}" y="{y + bar - 5}" text-anchor="end">{esc(label)}</text>'))
        x = float(label_width)
        for s in series:
            w = plot * s.values[i] / top
            if w > 0:
                out.append(
                    Raw(
                        f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{esc(s.color)}">'
                        f"<title>{esc(label)}: {esc(s.values[i])} {esc(s.name)}</title></rect>"
                    )
                )
            x += w
        out.append(Raw(f'<text x="{x + 6:.1f}" y="{y + bar - 5}" fill="#59636e">{esc(_num(totals[i]))}</text>'))
    out.append(Raw("</svg>"))
    return join(out)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"


def side_by_side(
    left_title: str, right_title: str, rows: list[tuple[str, str, str]], offsets: list[str] | None = None
) -> Raw:
    """Two code columns aligned by row; each row is (left, right, css class: same|first|'')."""
    headers = (["offset"] if offsets else []) + [left_title, right_title]
    cells = [([offsets[i]] if offsets else []) + [r[0], r[1]] for i, r in enumerate(rows)]
    return table(headers, cells, [r[2] for r in rows], class_="sbs")
