"""Records of an audit: the candidate, fingerprint findings, per-TU evidence and the report; JSON both ways."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

VMLINUX = "vmlinux"  # the object name of built-in code (as kgenv.build.target names it)

REPRODUCES = "reproduces"
MISMATCH = "mismatch"

# per-TU status
TU_IDENTICAL = "identical"
TU_DIFFERS = "differs"
TU_BUILD_FAILED = "build-failed"
TU_EMPTY = "no-functions"

# per-function outcome, as the audit counts it
FN_IDENTICAL = "identical"
FN_DIFFERS = "differs"
FN_UNMATCHED = "unmatched"  # the rebuilt object has it, the shipped binary does not
FN_SKIPPED = "skipped"  # not comparable: weak default replaced, ambiguous, discarded section


@dataclass(frozen=True)
class Candidate:
    """The toolchain under audit: where it runs and how its make line differs from the env's."""

    kind: str  # env | derived | image | foreign | host
    label: str
    image: str = ""  # engine image ID ("" on the host)
    cc: str = ""  # the compiler program the make line names
    make: dict[str, str] = field(default_factory=dict)  # make-line overrides of the env's variables

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "label": self.label,
            "image": self.image,
            "cc": self.cc,
            "make_overrides": " ".join(f"{k}={v}" for k, v in sorted(self.make.items())),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        make = dict(kv.split("=", 1) for kv in d.get("make_overrides", "").split())
        return cls(d["kind"], d["label"], d.get("image", ""), d.get("cc", ""), make)


@dataclass(frozen=True)
class Finding:
    """One fingerprint comparison: expected (manifest) vs what the candidate has."""

    item: str  # compiler.version, compiler.package-release, binutils.version, config.GCC_VERSION, make.CC ...
    expected: str
    candidate: str
    same: bool
    kind: str  # version | package-release | vendor | comment | config-drift | make | probe
    note: str = ""


@dataclass(frozen=True)
class FunctionDiff:
    """A function whose rebuilt code is not the shipped code, with the first differing instructions."""

    name: str
    tu: str
    outcome: str  # differs | unmatched
    reason: str  # the verify reason class, or why it is unmatched
    size: int = 0
    offset: int = -1
    object_insn: str = ""
    binary_insn: str = ""
    detail: str = ""
    object: str = ""  # the shipped object the TU belongs to: vmlinux or a module name


@dataclass(frozen=True)
class DisasmRow:
    """One row of the side-by-side disassembly around a TU's first difference."""

    tu: str
    function: str
    offset: int
    object: str
    binary: str
    same: bool


@dataclass(frozen=True)
class TuResult:
    """The evidence of one rebuilt translation unit."""

    tu: str
    status: str
    functions: int = 0
    identical: int = 0
    differing: int = 0
    unmatched: int = 0
    skipped: int = 0
    first_function: str = ""
    first_reason: str = ""
    error: str = ""
    object: str = ""  # the shipped object it was verified against: vmlinux or a module name ("" unknown)

    @property
    def is_module(self) -> bool:
        return self.object not in ("", VMLINUX)

    @property
    def compared(self) -> int:
        return self.identical + self.differing + self.unmatched

    @property
    def percent_identical(self) -> float:
        return round(100.0 * self.identical / self.compared, 2) if self.compared else 0.0

    @property
    def ok(self) -> bool:
        return self.status in (TU_IDENTICAL, TU_EMPTY)

    def to_dict(self) -> dict:
        d = asdict(self)
        obj = d.pop("object")  # keys in their documented order, the added one last
        return {**d, "compared": self.compared, "percent_identical": self.percent_identical, "object": obj}


@dataclass(frozen=True)
class AuditReport:
    """Everything an audit found; presenters (text, JSON, JUnit, HTML) read only this."""

    env: str
    release: str
    candidate: Candidate
    findings: tuple[Finding, ...]
    tus: tuple[TuResult, ...]
    differing: tuple[FunctionDiff, ...]
    disasm: tuple[DisasmRow, ...] = ()
    sample: dict[str, str | int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> dict:
        tus = self.tus
        n = {k: sum(getattr(t, k) for t in tus) for k in ("identical", "differing", "unmatched", "skipped")}
        compared = n["identical"] + n["differing"] + n["unmatched"]
        return {
            "tus": len(tus),
            "tus_identical": sum(t.ok for t in tus),
            "tus_build_failed": sum(t.status == TU_BUILD_FAILED for t in tus),
            "functions": compared,
            **n,
            "percent_identical": round(100.0 * n["identical"] / compared, 2) if compared else 0.0,
            "fingerprint_differences": sum(not f.same for f in self.findings),
            "module_tus": sum(t.is_module for t in tus),
        }

    @property
    def config_drift(self) -> list[Finding]:
        # CC_VERSION_TEXT only names the compiler; it reaches no code, so it alone is no drift.
        return [
            f for f in self.findings if f.kind == "config-drift" and not f.same and f.item != "config.CC_VERSION_TEXT"
        ]

    @property
    def verdict(self) -> str:
        """Reproduces: every rebuilt function identical, every TU built, and the config unchanged."""
        s = self.summary
        ok = s["functions"] > 0 and s["tus_identical"] == s["tus"] and not self.config_drift
        return REPRODUCES if ok else MISMATCH

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict == REPRODUCES else 1

    def top(self, n: int = 10) -> list[FunctionDiff]:
        """The largest differing functions first: they carry the most evidence."""
        return sorted(self.differing, key=lambda d: (-d.size, d.tu, d.name))[:n]

    def to_dict(self) -> dict:
        """Two levels deep: tables of scalars, and lists of flat records."""
        return {
            "env": self.env,
            "release": self.release,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "candidate": self.candidate.to_dict(),
            "summary": self.summary,
            "sample": dict(self.sample),
            "timings": dict(self.timings),
            "fingerprint": [asdict(f) for f in self.findings],
            "tus": [t.to_dict() for t in self.tus],
            "differing": [asdict(d) for d in self.differing],
            "disassembly": [asdict(r) for r in self.disasm],
        }

    @classmethod
    def from_dict(cls, d: dict) -> AuditReport:
        """Load a report written by to_dict, so it can be re-rendered in another format."""
        return cls(
            d["env"],
            d["release"],
            Candidate.from_dict(d["candidate"]),
            tuple(_rec(Finding, f) for f in d["fingerprint"]),
            tuple(_rec(TuResult, t) for t in d["tus"]),
            tuple(_rec(FunctionDiff, x) for x in d["differing"]),
            tuple(_rec(DisasmRow, r) for r in d.get("disassembly", [])),
            dict(d.get("sample", {})),
            dict(d.get("timings", {})),
        )


def _rec(cls, d: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
