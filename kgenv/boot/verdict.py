"""Turn a parsed serial log and the QEMU outcome into a Boot record: result, reason, timings, log lines."""

from __future__ import annotations

import re

from kgenv.boot.markers import Marker, Transcript
from kgenv.boot.qemu import Run
from kgenv.boot.record import PHASES, Boot

# What each failing phase means for the patch, in words for the user.
MEANING = {
    "precheck": "the check passes without the patch, so it proves nothing",
    "load": "the module did not load",
    "enable": "the transition to the patched state did not complete",
    "check": "the check does not pass with the patch applied",
    "sympos": "an old_sympos does not name the intended function",
    "disable": "the transition back to the unpatched state did not complete",
    "postcheck": "the check still passes after the patch was disabled",
    "unload": "the module did not unload",
}

# "panic" alone would match the command line (panic=-1).
_INTERESTING = (
    r"livepatch|Unknown symbol|version magic|disagrees about version|"
    r"module verification|Invalid module|Oops|BUG:|Kernel panic|WARNING:|Call Trace|"
    r"RIP:|Code:|unpatched|patching|transition"
)
LOG_LIMIT = 40


def relevant_lines(lines, name: str, limit: int = LOG_LIMIT) -> tuple[str, ...]:
    """Kernel lines about the module, livepatch, symbols and crashes; else the log's tail."""
    pattern = re.compile(f"{_INTERESTING}|{re.escape(name)}")  # case matters: "oops=panic"
    picked = [ln for ln in lines if pattern.search(ln)]
    return tuple((picked or list(lines)[-15:])[:limit])


def _timings(t: Transcript, run: Run, seen: dict[str, float]) -> dict[str, float | None]:
    """Guest phases from the guest clock (uptime at each marker); the rest from the host clock."""
    timings: dict[str, float | None] = {"total": run.seconds, "to_init": seen.get("init")}
    last = None
    for m in t.phases:
        name, at = m.get("name"), m.t
        if name == "init":
            timings["kernel"] = at
        elif last is not None and at is not None and name in PHASES:
            timings[name] = max(0.0, at - last)
        last = at if at is not None else last
    init, result = next((m.t for m in t.phases if m.get("name") == "init"), None), t.result
    if init is not None and result is not None and result.t is not None:
        timings["guest"] = result.t - init
    return {k: (round(v, 3) if v is not None else None) for k, v in timings.items()}


def _where(last: str | None) -> str:
    """The phase that was running: the one after the last reported."""
    if last is None:
        return "before /init started"
    if last in PHASES[:-1]:
        return f"during phase {PHASES[PHASES.index(last) + 1]}"
    return f"after phase {last}"


def _failure(t: Transcript, run: Run, timeout: float) -> tuple[str, str | None]:
    """(reason, failing phase) when the guest did not report a pass."""
    failed = next((m for m in t.phases if m.get("status") == "fail"), None)
    if failed is None and t.result is not None and t.result.get("phase") in MEANING:
        failed = Marker("phase", {"name": t.result.get("phase"), "status": "fail"})
    if failed:
        phase = failed.get("name")
        what = MEANING.get(phase, f"phase {phase} failed")
        return (f"{phase}: {what}: {failed.msg}" if failed.msg else f"{phase}: {what}"), phase
    last = t.phases[-1].get("name") if t.phases else None
    where = _where(last)
    if t.panic:
        return f"kernel panic {where}: {t.panic[0].strip()}", last
    if run.timed_out:
        return f"no result within {timeout:g}s ({where}); QEMU was stopped", last
    return f"the guest stopped without a result ({where})", last


def decide(t: Transcript, run: Run, *, timeout: float, module: str, kernel: str, seen: dict[str, float]) -> Boot:
    """The Boot record for one run."""
    phases = {m.get("name"): m.get("status") for m in t.phases}
    sympos = {f"{m.get('obj')}:{m.get('func')}:{m.get('pos')}": m.get("status") for m in t.of("sympos")}
    info = t.of("info")
    result = t.result
    log: tuple[str, ...]
    if result is not None and result.get("status") == "pass":
        verdict, reason, log = "pass", "", ()
    else:
        verdict = "fail"
        reason, _ = _failure(t, run, timeout)
        stuck = [f"stuck: {m.get('comm')} (pid {m.get('pid')})" for m in t.of("stuck")]
        stuck += [f"optional {m.get('optional')} did not load: {m.msg}" for m in info if m.get("optional")]
        extra = [ln for ln in t.console if ln.startswith(("stack> ", "check> "))]
        # A crash is shown whole, as printed; otherwise only the lines about this failure.
        log = t.panic or tuple(stuck) + tuple(extra) + relevant_lines(
            t.dmesg if t.dmesg is not None else t.console, module
        )
    return Boot(
        result=verdict,
        reason=reason,
        module=module,
        kernel=kernel,
        serial_log=str(run.serial_log),
        release=info[0].get("release") if info else "",
        timings=_timings(t, run, seen),
        phases=phases,
        sympos=sympos,
        kernel_log=log[:LOG_LIMIT],
    )
