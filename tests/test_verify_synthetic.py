"""verify on tiny C TUs compiled by the host gcc: one case per verdict and reason class."""

import json

import pytest
from click.testing import CliRunner
from synthetic_objects import REBUILT_A, SHIPPED_A, UTIL, B, C
from verify_build import compile_c, fake_kcore, link, link_module, runtime

from kgenv.cli import cli
from kgenv.verify import LiveBinary, open_binary, verify
from kgenv.verify.records import (
    AMBIGUOUS,
    DIFFERENT_CALLEE,
    DIFFERS,
    IDENTICAL,
    INSTRUCTION_SELECTION,
    LAYOUT_SIZE,
    MISSING,
    NOT_TRACEABLE,
    REGISTER_ALLOCATION,
    WEAK_OVERRIDDEN,
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """The shipped binary and objects, plus the rebuilt objects, under several flag sets."""
    d = tmp_path_factory.mktemp("verify")
    shipped = d / "shipped"
    rebuilt = d / "rebuilt"
    objs = [
        compile_c(shipped, "a.c", SHIPPED_A),
        compile_c(shipped, "b.c", B),
        compile_c(shipped, "c.c", C),
        compile_c(shipped, "d1/util.c", UTIL.format(n=1), ["-ffunction-sections"]),
        compile_c(shipped, "d2/util.c", UTIL.format(n=2), ["-ffunction-sections"]),
        runtime(shipped),
    ]
    binary = link(d / "vmlinux", objs)
    return {
        "dir": d,
        "binary": binary,
        "shipped_a": objs[0],
        "b": objs[1],
        "util1": objs[3],
        "rebuilt_a": compile_c(rebuilt, "a.c", REBUILT_A),
    }


def by_name(report):
    return {v.name: v for v in report.verdicts}


@pytest.fixture(scope="module")
def rebuilt(kit):
    return by_name(verify([kit["rebuilt_a"]], kit["binary"]))


def test_identical_functions(kit):
    got = by_name(verify([kit["shipped_a"], kit["b"]], kit["binary"]))
    for name in ("same", "konst", "regs", "caller", "bump", "msg", "g1", "g2", "use_scale"):
        assert got[name].verdict == IDENTICAL, got[name]
        assert got[name].code_identical
    assert got["caller"].relocs_checked >= 2  # __fentry__ and g1
    assert got["msg"].data_refs >= 1  # the merged string was compared by content
    assert "__mcount_loc" in got["same"].trace


def test_changed_constant_is_instruction_selection(rebuilt):
    v = rebuilt["konst"]
    assert v.verdict == DIFFERS and v.reason == INSTRUCTION_SELECTION
    assert "add" in v.difference.object_insn or "lea" in v.difference.object_insn
    assert v.difference.object_insn != v.difference.binary_insn


def test_swapped_operands_is_register_allocation(rebuilt):
    v = rebuilt["regs"]
    assert v.verdict == DIFFERS and v.reason == REGISTER_ALLOCATION


def test_retargeted_call_with_identical_bytes_is_caught(rebuilt):
    v = rebuilt["caller"]
    assert v.verdict == DIFFERS and v.reason == DIFFERENT_CALLEE
    assert "g2" in v.difference.detail and "g1" in v.difference.detail
    assert v.difference.object_insn.startswith("call")


def test_grown_function_is_layout(rebuilt):
    v = rebuilt["grow"]
    assert v.verdict == DIFFERS and v.reason in (LAYOUT_SIZE, INSTRUCTION_SELECTION)


def test_missing_lists_clone_candidates(rebuilt):
    v = rebuilt["scale"]
    assert v.verdict == MISSING
    assert "scale.constprop.0" in v.candidates
    assert rebuilt["only_here"].verdict == MISSING and not rebuilt["only_here"].candidates


def test_two_statics_of_one_name_without_tu_are_ambiguous(kit):
    got = by_name(verify([kit["util1"]], kit["binary"]))
    assert got["lonely"].verdict == AMBIGUOUS  # no caller says which copy is ours
    assert len(got["lonely"].candidates) == 2
    assert got["use1"].verdict == IDENTICAL
    # helper is pinned by its caller: the binary's use1 calls this copy, not d2/util.c's
    assert got["helper"].verdict == IDENTICAL
    assert got["helper"].address == open_binary(kit["binary"]).functions("helper")[0].value


def test_notrace_and_noinstr_are_not_traceable(rebuilt):
    quiet, entry = rebuilt["quiet"], rebuilt["entry_fn"]
    assert quiet.verdict == NOT_TRACEABLE and quiet.code_identical and "notrace" in quiet.trace
    assert entry.verdict == NOT_TRACEABLE and ".noinstr.text" in entry.trace


def test_weak_default_overridden(rebuilt):
    assert rebuilt["hook"].verdict == WEAK_OVERRIDDEN


@pytest.mark.parametrize("flags, entry", [(["-mnop-mcount"], "nop5"), (["-fcf-protection=branch"], "call __fentry__")])
def test_flag_variants(tmp_path, flags, entry):
    objs = [
        compile_c(tmp_path, "a.c", SHIPPED_A, flags),
        compile_c(tmp_path, "b.c", B, flags),
        compile_c(tmp_path, "c.c", C, flags),
        runtime(tmp_path),
    ]
    got = by_name(verify([objs[0]], link(tmp_path / "vmlinux", objs)))
    assert got["same"].verdict == IDENTICAL and entry in got["same"].trace
    assert got["caller"].verdict == IDENTICAL


def test_module_with_signature(kit, tmp_path):
    ko = link_module(tmp_path / "a.ko", [kit["shipped_a"]])
    binary = open_binary(ko)
    assert binary.kind == "module"
    same = by_name(verify([kit["shipped_a"]], binary))
    assert same["same"].verdict == IDENTICAL and same["caller"].verdict == IDENTICAL
    assert same["msg"].verdict == IDENTICAL
    changed = by_name(verify([kit["rebuilt_a"]], binary))
    assert changed["konst"].verdict == DIFFERS
    assert changed["caller"].verdict == DIFFERS and changed["caller"].reason == DIFFERENT_CALLEE


def test_live_kcore_normalises_ftrace_nops(kit, tmp_path):
    binary = open_binary(kit["binary"])
    same = binary.functions("same")[0]
    konst = binary.functions("konst")[0]
    nop5 = b"\x0f\x1f\x44\x00\x00"
    fake_kcore(kit["binary"], tmp_path / "kcore", tmp_path / "kallsyms", {same.value: nop5, konst.value + 7: b"\xcc"})
    live = LiveBinary(str(tmp_path / "kallsyms"), str(tmp_path / "kcore"))
    got = by_name(verify([kit["shipped_a"]], live))
    assert got["same"].verdict == IDENTICAL and "nop5" in got["same"].trace
    assert not got["same"].masked  # the ftrace NOP is equal, not merely masked
    assert got["konst"].verdict == DIFFERS


def test_cli_table_json_and_exit_codes(kit, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["verify", "--binary", str(kit["binary"]), "--function", "same", str(kit["shipped_a"])])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(cli, ["verify", "--binary", str(kit["binary"]), "--json", str(kit["rebuilt_a"])])
    assert bad.exit_code == 1
    doc = json.loads(bad.output)
    assert set(doc) == {"binary", "summary", "tus", "functions"}
    assert all(not isinstance(v, (dict, list)) for v in doc["summary"].values())  # two levels deep
    assert all(
        not isinstance(v, (dict, list))
        for f in doc["functions"]
        for k, v in f.items()
        if k not in ("masked", "candidates")
    )
    assert doc["summary"][DIFFERS] >= 3
    konst = next(f for f in doc["functions"] if f["name"] == "konst")
    assert konst["diff_offset"] >= 0 and konst["reason"] == INSTRUCTION_SELECTION
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an elf at all")
    err = runner.invoke(cli, ["verify", "--binary", str(kit["binary"]), str(junk)])
    assert err.exit_code == 2 and str(junk) in err.output and "Traceback" not in err.output
    noenv = runner.invoke(cli, ["verify", "--env", "nope", str(kit["shipped_a"])])
    assert noenv.exit_code == 2 and len(noenv.output.strip().splitlines()) == 1
