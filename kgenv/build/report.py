"""report.json of `kgenv build`: typed records that write, and read back, exactly its JSON shape.

The shape is two levels deep (result.guard_build_ids, a map of strings, one more) and stable (see
docs/build.md): the records below only give it types.
Reading validates every key, so a consumer (the CLI, the farm, tests) gets one line naming the file
and the key instead of a KeyError deep inside.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Self, get_type_hints

from kgenv.errors import UserError

if TYPE_CHECKING:
    from kgenv.boot.record import Boot

OUTCOMES = ("built", "refused", "error")
PHASE = "phase_"  # boot phases are flattened into the boot table as phase_<name>


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return _is_int(v) or isinstance(v, float)


# What a flat record's field type accepts in JSON, and how to say so in an error.
_CHECKS: dict[Any, tuple[Callable[[object], bool], str]] = {
    str: (lambda v: isinstance(v, str), "a string"),
    int: (_is_int, "an integer"),
    int | None: (lambda v: v is None or _is_int(v), "an integer or null"),
    float | None: (lambda v: v is None or _is_number(v), "a number or null"),
    tuple[str, ...]: (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    Mapping[str, str]: (
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "an object of strings",
    ),
}


def _table(data: object, where: str) -> dict:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected an object, got {type(data).__name__}")
    return data


def _value(data: dict, key: str, want: Any, where: str) -> Any:
    if key not in data:
        raise UserError(f"{where}.{key}: missing")
    ok, says = _CHECKS[want]
    if not ok(data[key]):
        raise UserError(f"{where}.{key}: expected {says}, got {json.dumps(data[key])[:40]}")
    v = data[key]
    return tuple(v) if isinstance(v, list) else MappingProxyType(dict(v)) if isinstance(v, dict) else v


def _no_extra(data: dict, known, where: str) -> None:
    extra = sorted(set(data) - set(known))
    if extra:
        raise UserError(f"{where}: unexpected key(s) {', '.join(extra)}")


class _Flat:
    """A record of scalars and string lists, in the key order report.json has always had."""

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: object, where: str) -> Self:
        """The record from its JSON object; `where` names the file and key (`out/report.json: env`)."""
        d = _table(data, where)
        hints = get_type_hints(cls)
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        _no_extra(d, names, where)
        return cls(**{n: _value(d, n, hints[n], where) for n in names})


def _plain(v: object) -> object:
    return list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v


@dataclass(frozen=True)
class ToolInfo(_Flat):
    """The "kgenv" table: which kgenv built, and the command line that repeats the build."""

    version: str
    reproducer: str


@dataclass(frozen=True)
class EnvInfo(_Flat):
    name: str
    image_id: str
    kernel_release: str
    build_id: str
    version: str


@dataclass(frozen=True)
class FixInfo(_Flat):
    name: str
    diff: str
    diff_sha256: str
    files: tuple[str, ...]
    tus: tuple[str, ...]
    notes: tuple[str, ...] = ()  # build files allowed, the generator's notes (fresh state, pins); the key only when set

    def to_dict(self) -> dict:
        d = super().to_dict()
        if not self.notes:
            del d["notes"]
        return d

    @classmethod
    def from_dict(cls, data: object, where: str) -> Self:
        d = _table(data, where)
        return super().from_dict(d if "notes" in d else {**d, "notes": []}, where)


@dataclass(frozen=True)
class ResultInfo(_Flat):
    outcome: str  # built / refused / error
    exit_code: int  # 0 / 1 / 2
    reason: str
    module: str  # path as written, "" unless built
    module_sha256: str
    klp_symbols: tuple[str, ...]  # "<obj>.<name>,<sympos>"
    # object -> the GNU build-id the module's guard requires before patching it ({} when no module was generated)
    guard_build_ids: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "guard_build_ids", MappingProxyType(dict(self.guard_build_ids)))


@dataclass(frozen=True)
class FunctionRecord(_Flat):
    """One replaced or refused function; verdict is replaced, refused or differs."""

    name: str
    tu: str
    object: str
    verdict: str
    sympos: int = 0
    address: int | None = None
    reason: str = ""
    trace: str = ""
    note: str = ""


@dataclass(frozen=True)
class BootSummary:
    """The boot test as the report shows it; phases become phase_<name> keys of the same table."""

    result: str
    reason: str
    release: str
    serial_log: str
    seconds: float | None
    phases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", MappingProxyType(dict(self.phases)))

    @classmethod
    def of(cls, boot: Boot) -> BootSummary:
        return cls(
            boot.result, boot.reason, boot.release, boot.serial_log, boot.timings.get("total"), dict(boot.phases)
        )

    def to_dict(self) -> dict:
        return {
            "result": self.result,
            "reason": self.reason,
            "release": self.release,
            "serial_log": self.serial_log,
            "seconds": self.seconds,
            **{f"{PHASE}{k}": v for k, v in self.phases.items()},
        }

    @classmethod
    def from_dict(cls, data: object, where: str) -> BootSummary:
        d = _table(data, where)
        plain = ("result", "reason", "release", "serial_log")
        phase_keys = [k for k in d if k.startswith(PHASE)]
        _no_extra(d, [*plain, "seconds", *phase_keys], where)
        text = {k: _value(d, k, str, where) for k in plain}
        return cls(
            **text,
            seconds=_value(d, "seconds", float | None, where),
            phases={k.removeprefix(PHASE): _value(d, k, str, where) for k in phase_keys},
        )


@dataclass(frozen=True)
class BuildReport:
    """The whole report.json; `to_dict()` is what is written, `from_dict()`/`load()` read it."""

    kgenv: ToolInfo
    env: EnvInfo
    fix: FixInfo
    result: ResultInfo
    functions: tuple[FunctionRecord, ...]
    stages: Mapping[str, float]  # seconds per stage, in the order they ran
    boot: BootSummary | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "functions", tuple(self.functions))
        object.__setattr__(self, "stages", MappingProxyType(dict(self.stages)))

    def replaced(self) -> list[FunctionRecord]:
        return [f for f in self.functions if f.verdict == "replaced"]

    def to_dict(self) -> dict:
        out = {
            "kgenv": self.kgenv.to_dict(),
            "env": self.env.to_dict(),
            "fix": self.fix.to_dict(),
            "result": self.result.to_dict(),
            "functions": [f.to_dict() for f in self.functions],
            "stages": dict(self.stages),
        }
        if self.boot is not None:
            out["boot"] = self.boot.to_dict()
        return out

    def to_json(self) -> str:
        """The text of report.json."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: object, file: str = "report.json") -> BuildReport:
        d = _table(data, file)
        _no_extra(d, ["kgenv", "env", "fix", "result", "functions", "stages", "boot"], file)
        for key in ("kgenv", "env", "fix", "result", "functions", "stages"):
            if key not in d:
                raise UserError(f"{file}: {key}: missing")
        if not isinstance(d["functions"], list):
            raise UserError(f"{file}: functions: expected a list, got {type(d['functions']).__name__}")
        stages = _table(d["stages"], f"{file}: stages")
        for k, v in stages.items():
            if not _is_number(v):
                raise UserError(f"{file}: stages.{k}: expected a number, got {json.dumps(v)[:40]}")
        result = ResultInfo.from_dict(d["result"], f"{file}: result")
        if result.outcome not in OUTCOMES:
            raise UserError(f"{file}: result.outcome: {result.outcome!r} is not one of {', '.join(OUTCOMES)}")
        return cls(
            kgenv=ToolInfo.from_dict(d["kgenv"], f"{file}: kgenv"),
            env=EnvInfo.from_dict(d["env"], f"{file}: env"),
            fix=FixInfo.from_dict(d["fix"], f"{file}: fix"),
            result=result,
            functions=tuple(
                FunctionRecord.from_dict(f, f"{file}: functions[{i}]") for i, f in enumerate(d["functions"])
            ),
            stages=stages,
            boot=BootSummary.from_dict(d["boot"], f"{file}: boot") if "boot" in d else None,
        )


def load(path: Path) -> BuildReport:
    """A report.json read and validated; UserError naming the file (and key) otherwise."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such report") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON: {e}") from None
    return BuildReport.from_dict(data, str(path))
