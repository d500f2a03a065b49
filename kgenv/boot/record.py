"""The Boot record: the outcome of one boot test, ready for report.json."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Guest phases in the order /init runs them; "enable"/"disable" are the patch transitions.
PHASES = ("init", "precheck", "load", "enable", "check", "sympos", "disable", "postcheck", "unload")
# Timing keys, always all present (None when not reached) so reports diff cleanly.
TIMINGS = ("total", "to_init", "kernel") + PHASES[1:] + ("guest",)


def _frozen(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Boot:
    """Result "pass" or "fail", why, where the time went, and the kernel lines that matter."""

    result: str
    reason: str
    module: str
    kernel: str
    serial_log: str
    release: str = ""
    timings: Mapping[str, float | None] = field(default_factory=dict)
    phases: Mapping[str, str] = field(default_factory=dict)
    sympos: Mapping[str, str] = field(default_factory=dict)
    kernel_log: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.result not in ("pass", "fail"):
            raise ValueError(f"result must be pass or fail, not {self.result!r}")
        timings = {k: self.timings.get(k) for k in TIMINGS}
        phases = {k: self.phases.get(k, "not-reached") for k in PHASES}
        object.__setattr__(self, "timings", _frozen(timings))
        object.__setattr__(self, "phases", _frozen(phases))
        object.__setattr__(self, "sympos", _frozen(self.sympos))
        object.__setattr__(self, "kernel_log", tuple(self.kernel_log))

    @property
    def passed(self) -> bool:
        return self.result == "pass"

    def to_dict(self) -> dict:
        """Plain JSON types, two levels deep, same keys every time."""
        return {
            "result": self.result,
            "reason": self.reason,
            "module": self.module,
            "kernel": self.kernel,
            "release": self.release,
            "serial_log": self.serial_log,
            "timings": {k: (round(v, 3) if v is not None else None) for k, v in self.timings.items()},
            "phases": dict(self.phases),
            "sympos": dict(self.sympos),
            "kernel_log": list(self.kernel_log),
        }
