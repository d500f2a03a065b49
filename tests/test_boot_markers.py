"""Marker parsing under noise, truncation and panics; and the verdict drawn from a transcript."""

import json
from pathlib import Path

import pytest

from kgenv.boot import markers
from kgenv.boot.qemu import Run
from kgenv.boot.record import PHASES, TIMINGS, Boot
from kgenv.boot.verdict import decide

NOISE = "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r\n\x1b[1;1HBooting from ROM..\r\n"


def mk(body: str) -> str:
    return f"\r\nKGENV:{body} :KGENV\r\n"


def phase(name: str, status: str, t: float, msg: str = "") -> str:
    return mk(f"phase name={name} status={status} t={t}" + (f" msg={msg}" if msg else ""))


def full_pass() -> str:
    log = NOISE + "[    0.000000] Linux version 6.1.0-57-amd64\r\n"
    log += mk("info release=6.1.0-57-amd64 name=lp t=2.00") + phase("init", "ok", 2.01)
    t = 2.01
    for p in PHASES[1:]:
        t += 0.1
        log += phase(p, "ok", round(t, 2))
    log += mk("sympos obj=vmlinux func=cmdline_proc_show pos=0 count=1 status=ok")
    log += mk(f"result status=pass phase=none t={t + 0.01:.2f}")
    log += mk("dmesg begin") + "[    2.1] livepatch: enabling patch 'lp'\r\n" + mk("dmesg end")
    return log


def run(log: str = "", timed_out=False, code=0, seconds=7.0) -> Run:
    return Run(None if timed_out else code, timed_out, seconds, Path("/tmp/serial.log"), "")


def test_clean_drops_escapes_and_carriage_returns():
    assert markers.clean(NOISE) == "SeaBIOS (version 1.16)\nBooting from ROM..\n"


def test_full_log_parses_in_order():
    t = markers.parse(full_pass())
    assert [m.get("name") for m in t.phases] == list(PHASES)
    assert t.result.get("status") == "pass"
    assert t.dmesg == ("[    2.1] livepatch: enabling patch 'lp'",)
    assert t.of("info")[0].get("release") == "6.1.0-57-amd64"
    assert not t.panic


def test_message_keeps_spaces_and_equals():
    m = markers.parse(phase("load", "fail", 2.3, "insmod: can't insert 'a.ko': x=y z"))
    assert m.phases[0].msg == "insmod: can't insert 'a.ko': x=y z"
    assert m.phases[0].t == 2.3


def test_marker_split_by_kernel_line_is_joined():
    log = "\r\nKGENV:phase name=lo[    2.123456] livepatch: enabling patch 'lp'\r\nad status=ok t=2.4 :KGENV\r\n"
    t = markers.parse(log)
    assert [(m.get("name"), m.get("status")) for m in t.phases] == [("load", "ok")]


def test_prefix_not_at_line_start_still_found():
    t = markers.parse("garbage\x1b[0m KGENV:phase name=init status=ok t=1.0 :KGENV\n")
    assert t.phases[0].get("name") == "init"


def test_truncated_marker_and_dmesg_are_not_guessed():
    log = full_pass()
    cut = log[: log.index("KGENV:result") + 20]  # mid-marker
    t = markers.parse(cut)
    assert t.result is None
    assert t.phases[-1].get("name") == "unload"
    cut_dmesg = log[: log.index("livepatch: enabling")]
    assert markers.parse(cut_dmesg).dmesg is None


def test_panic_block_found():
    log = (
        phase("init", "ok", 2.0)
        + phase("load", "ok", 2.1)
        + (
            "[    2.2] BUG: kernel NULL pointer dereference, address: 0000000000000000\r\n"
            "[    2.2] RIP: 0010:cmdline_proc_show+0x5/0x20\r\n"
            "[    2.3] Kernel panic - not syncing: Fatal exception\r\n"
        )
    )
    t = markers.parse(log)
    assert t.panic[0].endswith("BUG: kernel NULL pointer dereference, address: 0000000000000000")
    assert len(t.panic) == 3


def test_stream_yields_markers_as_lines_complete():
    s = markers.Stream()
    data = full_pass().encode()
    got = []
    for i in range(0, len(data), 7):  # awkward chunk size
        got += s.feed(data[i : i + 7])
    assert [m.kind for m in got][:2] == ["info", "phase"]
    assert sum(m.kind == "result" for m in got) == 1


def test_undecodable_bytes_tolerated():
    raw = b"\xff\xfe" + full_pass().encode()
    assert markers.parse(markers.decode(raw)).result.get("status") == "pass"


# --- verdicts ---------------------------------------------------------------------------


def verdict(log: str, **kw) -> Boot:
    return decide(markers.parse(log), run(**kw), timeout=60, module="lp", kernel="vmlinuz", seen={"init": 5.5})


def test_pass_record_has_stable_keys_and_timings():
    b = verdict(full_pass())
    d = b.to_dict()
    assert b.passed and d["result"] == "pass" and d["reason"] == ""
    assert list(d["timings"]) == list(TIMINGS)
    assert list(d["phases"]) == list(PHASES)
    assert d["timings"]["to_init"] == 5.5 and d["timings"]["kernel"] == 2.01
    assert d["timings"]["enable"] == pytest.approx(0.1)
    assert d["sympos"] == {"vmlinux:cmdline_proc_show:0": "ok"}
    assert json.loads(json.dumps(d)) == d
    assert all(
        not isinstance(v, dict) for sub in d.values() if isinstance(sub, dict) for v in sub.values()
    )  # two levels deep, no more


def test_load_failure_names_the_kernel_reason():
    log = (
        phase("init", "ok", 2.0)
        + phase("precheck", "ok", 2.1)
        + phase("load", "fail", 2.2, "insmod: can't insert '/kgenv/module.ko': unknown symbol in module")
        + mk("result status=fail phase=load t=2.3")
        + mk("dmesg begin")
        + "[    0.0] Command line: console=ttyS0 panic=-1 oops=panic\r\n"
        + "[    2.2] lp: Unknown symbol foo_bar (err -2)\r\n[    2.2] random: crng init done\r\n"
        + mk("dmesg end")
    )
    b = verdict(log)
    assert b.result == "fail"
    assert b.reason.startswith("load: the module did not load: insmod: can't insert")
    assert b.kernel_log == ("[    2.2] lp: Unknown symbol foo_bar (err -2)",)
    assert b.phases["load"] == "fail" and b.phases["enable"] == "not-reached"
    assert b.timings["enable"] is None


def test_stuck_transition_lists_tasks_and_stacks():
    log = (
        phase("init", "ok", 2.0)
        + phase("load", "ok", 2.1)
        + mk("stuck pid=42 comm=kworker/0:1 state=0")
        + "stack> [<0>] lp_busy+0x10/0x20\r\n"
        + phase("enable", "fail", 17.1, "transition to patched still running after 15s")
        + mk("result status=fail phase=enable t=17.2")
    )
    b = verdict(log)
    assert b.reason.startswith("enable: the transition to the patched state did not complete")
    assert b.kernel_log[:2] == ("stuck: kworker/0:1 (pid 42)", "stack> [<0>] lp_busy+0x10/0x20")


def test_panic_without_result():
    log = (
        phase("init", "ok", 2.0)
        + phase("load", "ok", 2.1)
        + (
            "[    2.2] BUG: unable to handle page fault for address: ffff\r\n"
            "[    2.3] Kernel panic - not syncing: Fatal exception\r\n"
        )
    )
    b = verdict(log, code=0)
    assert b.reason.startswith("kernel panic during phase enable: [    2.2] BUG: unable to handle")
    assert b.kernel_log[0].endswith("BUG: unable to handle page fault for address: ffff")


def test_timeout_without_output():
    b = verdict(NOISE, timed_out=True)
    assert b.reason == "no result within 60s (before /init started); QEMU was stopped"
    assert b.timings["total"] == 7.0


def test_result_fail_without_phase_marker_uses_result_phase():
    b = verdict(phase("init", "ok", 2.0) + mk("result status=fail phase=check t=3"))
    assert b.reason.startswith("check: the check does not pass")


def test_record_rejects_unknown_result():
    with pytest.raises(ValueError):
        Boot(result="maybe", reason="", module="m", kernel="k", serial_log="s")


def test_truncated_marker_does_not_swallow_the_next():
    log = (
        "\r\nKGENV:phase name=lo\r\n"
        + phase("enable", "ok", 2.4)
        + "KGENV:phase name=x KGENV:phase name=check status=ok t=3 :KGENV\n"
    )
    t = markers.parse(log)
    assert [m.get("name") for m in t.phases] == ["enable", "check"]
