"""Multi-object modules and branch relaxation, on tiny C TUs the host gcc compiles (unit tier).

The shipped side is built like the running kernel (one .text per TU, `ld -r` of several objects
for a module); the rebuilt side with `-ffunction-sections -fdata-sections` like `kgenv build`.
"""

import pytest
from verify_build import compile_c, link, link_module, runtime

from kgenv.verify import verify
from kgenv.verify.records import DIFFERENT_CALLEE, DIFFERENT_DATA, DIFFERS, IDENTICAL, MODULO_RELAXATION
from kgenv.verify.relax import INTERNAL, align, same_targets

# the kernel's own: no padding inside functions; no ICF so same-bodied leaves stay apart
KERNEL = ["-falign-jumps=1", "-falign-loops=1", "-fno-ipa-icf"]
SECTIONS = ["-ffunction-sections", "-fdata-sections"]

# static leaves next to their callers: the shipped assembler relaxes the tail calls to `jmp rel8`
TAIL = """
extern int helper(int), helper2(int);
static __attribute__((noinline)) int leaf(int x) { return x * 7 + 3; }
static __attribute__((noinline)) int leaf2(int x) { return x * 7 + 3; }
int tail(int x) { if (x > 10) return leaf(x - 1); if (x < -5) return x * 3; return leaf(x + 2); }
int use2(int x) { return leaf2(x) + 1; }
int far(int x) { return helper(x) + 2; }
const char *say(void) { return "hello module"; }
"""
OTHER = "int helper(int x) { return x ^ 5; }\nint helper2(int x) { return x ^ 5; }\n"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("relax")
    shipped = [compile_c(d / "ship", "t.c", TAIL, KERNEL), compile_c(d / "ship", "o.c", OTHER, KERNEL)]
    wrong_tail = TAIL.replace("return leaf(x + 2)", "return leaf2(x + 2)")
    wrong_far = TAIL.replace("return helper(x)", "return helper2(x)").replace("hello module", "hello mudule")
    return {
        "vmlinux": link(d / "vmlinux", [*shipped, runtime(d / "ship")]),
        "ko": link_module(d / "m.ko", shipped),
        "rebuilt": compile_c(d / "re", "t.c", TAIL, KERNEL + SECTIONS),
        "wrong_tail": compile_c(d / "wt", "t.c", wrong_tail, KERNEL + SECTIONS),
        "wrong_far": compile_c(d / "wf", "t.c", wrong_far, KERNEL + SECTIONS),
    }


def by_name(report):
    return {v.name: v for v in report.verdicts}


@pytest.mark.parametrize("binary", ["vmlinux", "ko"])
def test_relaxed_tail_calls_are_identical_modulo_relaxation(kit, binary):
    got = by_name(verify([kit["rebuilt"]], kit[binary]))
    assert all(v.verdict == IDENTICAL for v in got.values()), got
    tail = got["tail"]
    assert tail.reason == MODULO_RELAXATION and "jmp 5->2" in tail.note
    assert got["leaf"].reason == "" and got["use2"].reason == ""


@pytest.mark.parametrize("binary", ["vmlinux", "ko"])
def test_relaxed_branch_to_another_callee_differs(kit, binary):
    tail = by_name(verify([kit["wrong_tail"]], kit[binary]))["tail"]
    assert tail.verdict == DIFFERS and tail.reason == DIFFERENT_CALLEE
    assert "leaf2" in tail.difference.detail


def test_module_of_two_objects_resolves_across_them(kit):
    """A call into the other object of an `ld -r` module and a merged string compare by what they resolve to."""
    got = by_name(verify([kit["rebuilt"]], kit["ko"]))
    assert got["far"].verdict == IDENTICAL and got["far"].relocs_checked >= 2
    assert got["say"].verdict == IDENTICAL and got["say"].data_refs == 1
    wrong = by_name(verify([kit["wrong_far"]], kit["ko"]))
    assert wrong["far"].verdict == DIFFERS and wrong["far"].reason == DIFFERENT_CALLEE
    assert wrong["say"].verdict == DIFFERS and wrong["say"].reason == DIFFERENT_DATA


# hand-made code: jg over a tail jmp; the binary's jmp is rel8, so the jg's displacement shrinks by 3
OBJ = bytes.fromhex("7f05" + "e900000000" + "c3")  # jg 7; jmp <reloc>; ret
BIN = bytes.fromhex("7f02" + "eb10" + "c3")  # jg 4; jmp +0x10; ret
BIN_BAD = bytes.fromhex("7f01" + "eb10" + "c3")  # jg 3: into the middle of nowhere


def _targets(al, osize, external):
    def otarget(insn):
        return ("ext", "callee") if insn.mnemonic == "jmp" else (INTERNAL, int(insn.operands, 16))

    return same_targets(al, osize, otarget, lambda insn: ("ext", external) if insn.mnemonic == "jmp" else None)


def test_align_maps_internal_branches_across_a_relaxed_jump():
    al = align(OBJ, BIN, {3: 4}, {})
    assert not isinstance(al, int)
    assert al.relaxed == ["0x2 jmp 5->2"] and al.omap[7] == 4 and al.to_binary(3) == 3
    assert _targets(al, len(OBJ), "callee") is None


def test_align_refuses_a_wrong_internal_target_or_another_callee():
    al = align(OBJ, BIN_BAD, {3: 4}, {})
    assert not isinstance(al, int)
    pair = _targets(al, len(OBJ), "callee")
    assert pair is not None and pair[0].mnemonic == "jg"
    good = align(OBJ, BIN, {3: 4}, {})
    assert not isinstance(good, int)
    pair = _targets(good, len(OBJ), "another")
    assert pair is not None and pair[0].mnemonic == "jmp"


def test_align_refuses_changed_instructions():
    assert align(OBJ, bytes.fromhex("7c02" + "eb10" + "c3"), {3: 4}, {}) == 0  # jl is not jg
    assert align(OBJ, bytes.fromhex("7f02" + "eb10" + "c2" + "0000"), {3: 4}, {}) == 7  # ret imm16
    assert isinstance(align(OBJ, BIN + b"\xc3", {3: 4}, {}), int)  # an extra instruction
