"""A small JUnit XML writer: suites of cases in, the Jenkins/GitLab `<testsuites>` document out.

The shape follows the common JUnit schema: testsuites > testsuite (name, tests, failures, errors,
skipped, time) > testcase (classname, name, time) with at most one failure, error or skipped child,
plus system-out. ElementTree escapes markup; characters XML 1.0 cannot carry at all are replaced.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

# XML 1.0 allows tab, newline, carriage return and everything from U+0020 up, minus surrogates and U+FFFE/F
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean(text: str) -> str:
    """Text safe for XML 1.0: forbidden characters become U+FFFD."""
    return _ILLEGAL.sub("\ufffd", str(text))


@dataclass(frozen=True)
class Case:
    """One test case; `failure`, `error` or `skipped` holds its one-line message when it did not pass."""

    name: str
    classname: str
    time: float = 0.0
    failure: str | None = None
    error: str | None = None
    skipped: str | None = None
    details: str = ""  # the body of the failure/error element
    kind: str = ""  # its type attribute
    stdout: str = ""
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    name: str
    cases: tuple[Case, ...]
    timestamp: str = ""  # ISO 8601, e.g. 2024-01-01T12:00:00
    hostname: str = ""
    properties: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "tests": len(self.cases),
            "failures": sum(c.failure is not None for c in self.cases),
            "errors": sum(c.error is not None and c.failure is None for c in self.cases),
            "skipped": sum(c.skipped is not None and c.failure is None and c.error is None for c in self.cases),
        }


def _props(parent: ET.Element, props: dict[str, str]) -> None:
    if props:
        el = ET.SubElement(parent, "properties")
        for k, v in props.items():
            ET.SubElement(el, "property", name=clean(k), value=clean(v))


def _case(parent: ET.Element, c: Case) -> None:
    el = ET.SubElement(parent, "testcase", classname=clean(c.classname), name=clean(c.name), time=f"{c.time:.3f}")
    _props(el, c.properties)
    for tag, message in (("failure", c.failure), ("error", c.error), ("skipped", c.skipped)):
        if message is not None:
            sub = ET.SubElement(el, tag, message=clean(message))
            if tag != "skipped":
                sub.set("type", clean(c.kind or tag))
                sub.text = clean(c.details) if c.details else None
            break
    if c.stdout:
        ET.SubElement(el, "system-out").text = clean(c.stdout)


def to_xml(suites: list[Suite], name: str = "") -> str:
    """The whole document as a string, with an XML declaration."""
    root = ET.Element("testsuites", name=clean(name))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for s in suites:
        n = s.counts()
        time = sum(c.time for c in s.cases)
        attrs = {"name": clean(s.name), **{k: str(v) for k, v in n.items()}, "time": f"{time:.3f}"}
        if s.timestamp:
            attrs["timestamp"] = s.timestamp
        if s.hostname:
            attrs["hostname"] = clean(s.hostname)
        el = ET.SubElement(root, "testsuite", attrs)
        _props(el, s.properties)
        for c in s.cases:
            _case(el, c)
        totals = {k: totals[k] + n[k] for k in totals}
        total_time += time
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
