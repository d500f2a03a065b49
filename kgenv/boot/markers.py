"""Parse the guest's "KGENV:" markers out of a noisy serial log (escape codes, kernel lines, truncation)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PREFIX = "KGENV:"
SUFFIX = ":KGENV"

# CSI / OSC / two-character escapes from firmware and terminals, then other control bytes.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[()*+][ -~]|[@-Z\\^_`-~])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_KERNEL_LINE = re.compile(r"^\s*\[\s*\d+\.\d+\]")
_KERNEL_STAMP = re.compile(r"\[\s*\d+\.\d+\] ")
_PANIC = re.compile(
    r"Kernel panic - not syncing|\bBUG:|\bOops\b|general protection fault|"
    r"Attempted to kill init"
)


@dataclass(frozen=True)
class Marker:
    """One complete marker: its kind ("phase", "result", ...), its fields and its message."""

    kind: str
    fields: dict[str, str]
    msg: str = ""

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    @property
    def t(self) -> float | None:
        try:
            return float(self.fields["t"])
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class Transcript:
    """Everything the host learns from one serial log."""

    markers: tuple[Marker, ...]
    console: tuple[str, ...]  # clean non-marker lines, in order
    dmesg: tuple[str, ...] | None  # the dumped kernel log, None if the dump never completed
    panic: tuple[str, ...] = field(default=())

    def of(self, kind: str) -> list[Marker]:
        return [m for m in self.markers if m.kind == kind]

    @property
    def result(self) -> Marker | None:
        found = self.of("result")
        return found[-1] if found else None

    @property
    def phases(self) -> list[Marker]:
        return self.of("phase")


def clean(text: str) -> str:
    """Drop escape sequences, carriage returns and stray control bytes; keep newlines and tabs."""
    return _CONTROL.sub("", _ANSI.sub("", text.replace("\r", "")))


def parse_marker(body: str) -> Marker | None:
    """Parse "kind k=v ... [msg=free text]" (the part between prefix and suffix)."""
    head, sep, msg = body.partition(" msg=")
    words = head.split()
    if not words or not re.fullmatch(r"[a-z_]+", words[0]):
        return None
    fields = {}
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if eq:
            fields[key] = value
        else:
            # A bare word is fine ("dmesg begin"): keep it as a flag.
            fields[word] = ""
    return Marker(words[0], fields, msg.strip() if sep else "")


def _cut_kernel(text: str) -> str:
    """A kernel message printed into the middle of our line runs to its end: drop it."""
    k = _KERNEL_STAMP.search(text)
    return text[: k.start()] if k and SUFFIX not in text[: k.start()] else text


def _join_split(lines: list[str], i: int) -> tuple[str, int]:
    """A marker cut by kernel output: skip that and glue the rest back (returns text, last index)."""
    start = lines[i].find(PREFIX)
    text = lines[i][:start] + _cut_kernel(lines[i][start:])
    j = i + 1
    while SUFFIX not in text and j < len(lines) and j <= i + 20:
        if PREFIX in lines[j]:
            return lines[i], i  # a new marker starts: this one was truncated, leave it
        if not _KERNEL_LINE.match(lines[j]):
            text += _cut_kernel(lines[j])
        j += 1
    return (text, j - 1) if SUFFIX in text else (lines[i], i)


def _markers_in(line: str) -> list[Marker]:
    found = []
    start = line.find(PREFIX)
    while start >= 0:
        end = line.find(SUFFIX, start + len(PREFIX))
        if end < 0:
            break  # truncated marker: never guess its contents
        later = line.find(PREFIX, start + len(PREFIX), end)
        if later >= 0:  # the first prefix never got its end: start over at the later one
            start = later
            continue
        marker = parse_marker(line[start + len(PREFIX) : end].strip())
        if marker:
            found.append(marker)
        start = line.find(PREFIX, end + len(SUFFIX))
    return found


def parse(text: str) -> Transcript:
    """Read a whole serial log (str or bytes decoded leniently) into a Transcript."""
    lines = clean(text).split("\n")
    markers: list[Marker] = []
    console: list[str] = []
    dmesg: list[str] | None = None
    in_dmesg = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if PREFIX in line:
            if SUFFIX not in line[line.find(PREFIX) :]:
                line, i = _join_split(lines, i)
            for m in _markers_in(line):
                markers.append(m)
                if m.kind == "dmesg" and "begin" in m.fields:
                    in_dmesg, dmesg = True, []
                elif m.kind == "dmesg" and "end" in m.fields:
                    in_dmesg = False
        elif in_dmesg and dmesg is not None:
            if line.strip():
                dmesg.append(line)
        elif line.strip():
            console.append(line)
        i += 1
    if in_dmesg:
        dmesg = None  # the dump was cut short: do not pretend it is the whole log
    return Transcript(tuple(markers), tuple(console), tuple(dmesg) if dmesg is not None else None, panic_lines(console))


def panic_lines(lines: list[str] | tuple[str, ...], limit: int = 40) -> tuple[str, ...]:
    """The first panic/oops block on the console, as the kernel printed it."""
    for i, line in enumerate(lines):
        if _PANIC.search(line):
            return tuple(lines[i : i + limit])
    return ()


def decode(raw: bytes) -> str:
    """Serial bytes to text; firmware writes bytes that are not UTF-8."""
    return raw.decode("utf-8", errors="replace")


class Stream:
    """Incremental reader for live progress: yields markers as their lines complete."""

    def __init__(self) -> None:
        self._buf = ""

    def feed(self, raw: bytes) -> list[Marker]:
        self._buf += clean(decode(raw))
        *lines, self._buf = self._buf.split("\n")
        return [m for line in lines for m in _markers_in(line)]
